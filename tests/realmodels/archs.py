"""Small ports of real public Keras architectures (written here, not copied).

Every ``arch_*`` function takes ``K`` (``tf_keras`` or ``keras``) and returns an
unbuilt-weights model; sizes (filters, units, input sizes, block counts) are
shrunk so that each model builds and converts in seconds, while the layer
types, their order, the wiring (skips, shared layers, nested models, wrappers,
call-time ``training=`` arguments, raw TensorFlow ops) and the non-default
layer arguments follow the original. Where a port adds a BatchNormalization
that the original does not have (so that every model has one), the builder's
docstring says so. Sources and licences: ``PROVENANCE.md``.
"""

from __future__ import annotations

from types import SimpleNamespace


# --------------------------------------------------------------------------- helpers


def is_tfk(K) -> bool:
    return K.__name__.startswith("tf_keras")


def ops(K):
    """Raw-op helpers: ``tf.*`` on tf_keras tensors (recorded as TFOpLambda/SlicingOpLambda),
    ``keras.ops.*`` on Keras 3 tensors (recorded as operation nodes)."""
    if is_tfk(K):
        import tensorflow as tf

        return SimpleNamespace(
            expand_dims=lambda x, axis: tf.expand_dims(x, axis),
            relu6=tf.nn.relu6,
            concat=lambda xs, axis: tf.concat(xs, axis=axis),
            mean=lambda x, axis: tf.reduce_mean(x, axis=axis),
            sum=lambda x, axis, keepdims=False: tf.reduce_sum(x, axis=axis, keepdims=keepdims),
            l2norm=lambda x, axis: tf.math.l2_normalize(x, axis=axis),
            minimum=tf.minimum, maximum=tf.maximum, sqrt=tf.sqrt, square=tf.square,
            sigmoid=tf.math.sigmoid, abs=tf.abs,
            not_equal=tf.math.not_equal,
        )
    import keras

    o = keras.ops
    return SimpleNamespace(
        expand_dims=lambda x, axis: o.expand_dims(x, axis),
        relu6=o.relu6,
        concat=lambda xs, axis: o.concatenate(xs, axis=axis),
        mean=lambda x, axis: o.mean(x, axis=axis),
        sum=lambda x, axis, keepdims=False: o.sum(x, axis=axis, keepdims=keepdims),
        l2norm=lambda x, axis: o.normalize(x, axis=axis, order=2),
        minimum=o.minimum, maximum=o.maximum, sqrt=o.sqrt, square=o.square,
        sigmoid=o.sigmoid, abs=o.abs,
        not_equal=o.not_equal,
    )


def leaky(K, alpha, name=None):
    if is_tfk(K):
        return K.layers.LeakyReLU(alpha=alpha, name=name)
    return K.layers.LeakyReLU(negative_slope=alpha, name=name)


def l2(K, v):
    return K.regularizers.l2(v)


def app_module(K, name):
    """``<framework>.src.applications.<name>`` (for the generic constructors the public API hides)."""
    import importlib

    root = "tf_keras.src" if is_tfk(K) else "keras.src"
    return importlib.import_module(f"{root}.applications.{name}")


# --------------------------------------------------------------------------- detection


def _dbl(K, x, filters, size, strides=1, name=None):
    """keras-yolo3 DarknetConv2D_BN_Leaky: Conv2D (no bias, L2 5e-4; 'valid' after the
    explicit top-left ZeroPadding when strided) -> BN -> LeakyReLU(alpha=0.1)."""
    L = K.layers
    x = L.Conv2D(filters, size, strides=strides, padding="valid" if strides == 2 else "same",
                 use_bias=False, kernel_regularizer=l2(K, 5e-4))(x)
    x = L.BatchNormalization()(x)
    return leaky(K, 0.1)(x)


def _dconv(K, x, filters, size):
    return K.layers.Conv2D(filters, size, padding="same", kernel_regularizer=l2(K, 5e-4))(x)


def arch_yolov3_tiny(K):
    """qqwweee/keras-yolo3 ``tiny_yolo_body`` (filters / 8, 3 anchors x (2 classes + 5)); open spatial input."""
    L = K.layers
    out = 3 * (2 + 5)
    inp = L.Input((None, None, 3), name="input_1")
    x1 = _dbl(K, inp, 2, 3)
    for f in (4, 8, 16):
        x1 = L.MaxPooling2D(2, 2, padding="same")(x1)
        x1 = _dbl(K, x1, f, 3)
    x1 = L.MaxPooling2D(2, 2, padding="same")(x1)
    x1 = _dbl(K, x1, 32, 3)
    x2 = L.MaxPooling2D(2, 2, padding="same")(x1)
    x2 = _dbl(K, x2, 64, 3)
    x2 = L.MaxPooling2D(2, 1, padding="same")(x2)
    x2 = _dbl(K, x2, 128, 3)
    x2 = _dbl(K, x2, 32, 1)
    y1 = _dconv(K, _dbl(K, x2, 64, 3), out, 1)
    x2 = _dbl(K, x2, 16, 1)
    x2 = L.UpSampling2D(2)(x2)
    y2 = L.Concatenate()([x2, x1])
    y2 = _dconv(K, _dbl(K, y2, 32, 3), out, 1)
    return K.Model(inp, [y1, y2], name="tiny_yolo")


def arch_yolov3(K):
    """qqwweee/keras-yolo3 ``yolo_body`` on ``darknet_body`` (filters / 8, one residual block per
    stage), three heads; ZeroPadding2D(((1, 0), (1, 0))) before each strided conv."""
    L = K.layers
    out = 3 * (2 + 5)

    def resblock(x, nf):
        x = L.ZeroPadding2D(((1, 0), (1, 0)))(x)
        x = _dbl(K, x, nf, 3, strides=2)
        y = _dbl(K, x, nf // 2, 1)
        y = _dbl(K, y, nf, 3)
        return L.Add()([x, y])

    def last_layers(x, nf):
        for _ in range(2):
            x = _dbl(K, x, nf, 1)
            x = _dbl(K, x, nf * 2, 3)
        x = _dbl(K, x, nf, 1)
        y = _dconv(K, _dbl(K, x, nf * 2, 3), out, 1)
        return x, y

    inp = L.Input((None, None, 3), name="input_1")
    x = _dbl(K, inp, 4, 3)
    feats = []
    for nf in (8, 16, 32, 64, 128):
        x = resblock(x, nf)
        feats.append(x)
    x, y1 = last_layers(feats[4], 32)
    x = L.UpSampling2D(2)(_dbl(K, x, 16, 1))
    x = L.Concatenate()([x, feats[3]])
    x, y2 = last_layers(x, 16)
    x = L.UpSampling2D(2)(_dbl(K, x, 8, 1))
    x = L.Concatenate()([x, feats[2]])
    x, y3 = last_layers(x, 8)
    return K.Model(inp, [y1, y2, y3], name="yolov3")


class _MaskRCNNBatchNorm:
    """Factory for matterport/Mask_RCNN ``BatchNorm`` (a BatchNormalization subclass whose call
    passes ``training`` through; the model calls it with ``training=config.TRAIN_BN``)."""

    _cache: dict = {}

    @classmethod
    def get(cls, K):
        key = K.__name__
        if key not in cls._cache:
            base = K.layers.BatchNormalization

            if is_tfk(K):
                class BatchNorm(base):
                    def call(self, inputs, training=None):
                        return super().call(inputs, training=training)
            else:
                import keras

                @keras.saving.register_keras_serializable(package="mrcnn")
                class BatchNorm(base):
                    def call(self, inputs, training=None, mask=None):
                        return super().call(inputs, training=training, mask=mask)

            cls._cache[key] = BatchNorm
        return cls._cache[key]


def custom_objects(K) -> dict:
    """What load_model (and bnrewrite) need for the ports with custom objects: the Mask R-CNN
    ``BatchNorm``, PointNet's ``OrthogonalRegularizer``, EfficientDet's ``wBiFPNAdd`` and the named
    functions Keras 3 saves Lambda layers by (DDIM's embedding, FaceNet's scaling). No name here
    shadows a Keras class, so one dict serves every case that needs one."""
    bn = _MaskRCNNBatchNorm.get(K)
    name = "BatchNorm" if is_tfk(K) else "mrcnn>BatchNorm"
    reg = _orthogonal_regularizer(K)
    return {name: bn, "BatchNorm": bn,
            "OrthogonalRegularizer": reg, "OrthogonalRegularizer>OrthogonalRegularizer": reg,
            "wBiFPNAdd": _wbifpn_add(K),
            "sinusoidal_embedding_k3": sinusoidal_embedding_k3, "sinusoidal_embedding_tf": sinusoidal_embedding_tf,
            "facenet_scaling": facenet_scaling}


def arch_mask_rcnn_fpn(K, train_bn=False):
    """matterport/Mask_RCNN ``resnet_graph`` (stage 5 on, one block per stage, filters / 16) with
    ``BatchNorm(...)(x, training=train_bn)``, the FPN top-down path, and the RPN built once as a
    nested model (``build_rpn_model``) and called on P2..P6 (shared weights); open spatial input."""
    L = K.layers
    BN = _MaskRCNNBatchNorm.get(K)

    def conv_block(x, k, filters, stage, block, strides=2):
        f1, f2, f3 = filters
        cb, bb = f"res{stage}{block}_branch", f"bn{stage}{block}_branch"
        y = L.Conv2D(f1, 1, strides=strides, name=cb + "2a")(x)
        y = BN(name=bb + "2a")(y, training=train_bn)
        y = L.Activation("relu")(y)
        y = L.Conv2D(f2, k, padding="same", name=cb + "2b")(y)
        y = BN(name=bb + "2b")(y, training=train_bn)
        y = L.Activation("relu")(y)
        y = L.Conv2D(f3, 1, name=cb + "2c")(y)
        y = BN(name=bb + "2c")(y, training=train_bn)
        s = L.Conv2D(f3, 1, strides=strides, name=cb + "1")(x)
        s = BN(name=bb + "1")(s, training=train_bn)
        y = L.Add()([y, s])
        return L.Activation("relu", name=f"res{stage}{block}_out")(y)

    inp = L.Input((None, None, 3), name="input_image")
    x = L.ZeroPadding2D(3)(inp)
    x = L.Conv2D(4, 7, strides=2, name="conv1")(x)
    x = BN(name="bn_conv1")(x, training=train_bn)
    x = L.Activation("relu")(x)
    c1 = x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    c2 = conv_block(c1, 3, [4, 4, 16], 2, "a", strides=1)
    c3 = conv_block(c2, 3, [8, 8, 32], 3, "a")
    c4 = conv_block(c3, 3, [16, 16, 64], 4, "a")
    c5 = conv_block(c4, 3, [32, 32, 128], 5, "a")
    d = 16  # TOP_DOWN_PYRAMID_SIZE / 16
    p5 = L.Conv2D(d, 1, name="fpn_c5p5")(c5)
    p4 = L.Add(name="fpn_p4add")([L.UpSampling2D(2, name="fpn_p5upsampled")(p5), L.Conv2D(d, 1, name="fpn_c4p4")(c4)])
    p3 = L.Add(name="fpn_p3add")([L.UpSampling2D(2, name="fpn_p4upsampled")(p4), L.Conv2D(d, 1, name="fpn_c3p3")(c3)])
    p2 = L.Add(name="fpn_p2add")([L.UpSampling2D(2, name="fpn_p3upsampled")(p3), L.Conv2D(d, 1, name="fpn_c2p2")(c2)])
    p2 = L.Conv2D(d, 3, padding="same", name="fpn_p2")(p2)
    p3 = L.Conv2D(d, 3, padding="same", name="fpn_p3")(p3)
    p4 = L.Conv2D(d, 3, padding="same", name="fpn_p4")(p4)
    p5 = L.Conv2D(d, 3, padding="same", name="fpn_p5")(p5)
    p6 = L.MaxPooling2D(1, strides=2, name="fpn_p6")(p5)

    a = 3  # anchors per location
    fm = L.Input((None, None, d), name="input_rpn_feature_map")
    shared = L.Conv2D(16, 3, padding="same", activation="relu", name="rpn_conv_shared")(fm)
    logits = L.Conv2D(2 * a, 1, name="rpn_class_raw")(shared)
    logits = L.Reshape((-1, 2))(logits)
    probs = L.Activation("softmax", name="rpn_class_xxx")(logits)
    bbox = L.Conv2D(4 * a, 1, name="rpn_bbox_pred")(shared)
    bbox = L.Reshape((-1, 4))(bbox)
    rpn = K.Model(fm, [logits, probs, bbox], name="rpn_model")
    outs = [rpn(p) for p in (p2, p3, p4, p5, p6)]
    names = ["rpn_class_logits", "rpn_class", "rpn_bbox"]
    merged = [L.Concatenate(axis=1, name=n)([o[i] for o in outs]) for i, n in enumerate(names)]
    return K.Model(inp, merged, name="mask_rcnn")


# --------------------------------------------------------------------------- segmentation


def _vanilla_encoder(K, inp, filters=(8, 16, 32, 32)):
    """divamgupta/image-segmentation-keras ``vanilla_encoder``: ZeroPadding(1) -> Conv 3x3 valid -> BN
    -> ReLU -> MaxPool per level (filters / 8)."""
    L = K.layers
    x, levels = inp, []
    for i, f in enumerate(filters):
        x = L.ZeroPadding2D(1)(x)
        x = L.Conv2D(f, 3, padding="valid")(x)
        x = L.BatchNormalization()(x)
        x = L.Activation("relu")(x)
        if i < 3:
            x = L.MaxPooling2D(2)(x)
        levels.append(x)
    return levels


def _seg_head(K, x, n_classes, h, w):
    """``get_segmentation_model``: Reshape((h*w, n)) -> softmax."""
    L = K.layers
    x = L.Reshape((h * w, n_classes))(x)
    return L.Activation("softmax")(x)


def arch_unet(K):
    """divamgupta/image-segmentation-keras ``_unet`` on ``vanilla_encoder`` (filters / 8, 64x64 input)."""
    L = K.layers
    inp = L.Input((64, 64, 3), name="input_1")
    f1, f2, f3, f4 = _vanilla_encoder(K, inp)
    o = f3
    o = L.ZeroPadding2D(1)(o)
    o = L.Conv2D(32, 3, padding="valid")(o)
    o = L.BatchNormalization()(o)
    for skip, f in ((f2, 16), (f1, 8)):
        o = L.UpSampling2D(2)(o)
        o = L.concatenate([o, skip], axis=-1)
        o = L.ZeroPadding2D(1)(o)
        o = L.Conv2D(f, 3, padding="valid")(o)
        o = L.BatchNormalization()(o)
    o = L.Conv2D(4, 3, padding="same")(o)
    return K.Model(inp, _seg_head(K, o, 4, 32, 32), name="unet")


def arch_segnet(K):
    """divamgupta/image-segmentation-keras ``segnet_decoder`` on ``vanilla_encoder`` (filters / 8)."""
    L = K.layers
    inp = L.Input((64, 64, 3), name="input_1")
    levels = _vanilla_encoder(K, inp)
    o = levels[3]
    o = L.ZeroPadding2D(1)(o)
    o = L.Conv2D(32, 3, padding="valid")(o)
    o = L.BatchNormalization()(o)
    for f in (16, 8):
        o = L.UpSampling2D(2)(o)
        o = L.ZeroPadding2D(1)(o)
        o = L.Conv2D(f, 3, padding="valid")(o)
        o = L.BatchNormalization()(o)
    o = L.UpSampling2D(2)(o)
    o = L.ZeroPadding2D(1)(o)
    o = L.Conv2D(8, 3, padding="valid")(o)
    o = L.BatchNormalization()(o)
    o = L.Conv2D(4, 3, padding="same")(o)
    return K.Model(inp, _seg_head(K, o, 4, 64, 64), name="segnet")


def arch_pspnet(K):
    """divamgupta/image-segmentation-keras ``_pspnet``: pyramid pooling (factors 1, 2, 3, 6:
    AveragePooling -> 1x1 Conv (no bias) -> BN -> ReLU -> bilinear resize) on the encoder's
    last level, concatenated, 1x1 Conv -> BN -> ReLU -> Conv -> x8 bilinear resize. The original's
    ``resize_image`` is a Lambda around ``K.resize_images(..., interpolation='bilinear')``; here it
    is the equivalent UpSampling2D(interpolation='bilinear')."""
    L = K.layers
    inp = L.Input((96, 96, 3), name="input_1")
    o = _vanilla_encoder(K, inp)[3]  # 12 x 12
    pools = [o]
    for p in (1, 2, 3, 6):
        size = 12 // p
        y = L.AveragePooling2D(size, strides=size, padding="same")(o)
        y = L.Conv2D(16, 1, padding="same", use_bias=False)(y)
        y = L.BatchNormalization()(y)
        y = L.Activation("relu")(y)
        y = L.UpSampling2D(size, interpolation="bilinear")(y)
        pools.append(y)
    o = L.Concatenate(axis=-1)(pools)
    o = L.Conv2D(16, 1, use_bias=False)(o)
    o = L.BatchNormalization()(o)
    o = L.Activation("relu")(o)
    o = L.Conv2D(4, 3, padding="same")(o)
    o = L.UpSampling2D(8, interpolation="bilinear")(o)
    return K.Model(inp, _seg_head(K, o, 4, 96, 96), name="pspnet")


def arch_unet_plus_plus(K):
    """MrGiovanni/UNetPlusPlus (keras ``xnet``): nested dense skip pathways X(i, j) built from
    Conv3x3 -> BN -> ReLU units, UpSampling2D decoder, depth 3, filters / 16; open spatial input
    (the xnet builder's default ``input_shape=(None, None, 3)``)."""
    L = K.layers

    def unit(x, f, name):
        for k in ("a", "b"):
            x = L.Conv2D(f, 3, padding="same", use_bias=False, name=f"{name}_conv{k}")(x)
            x = L.BatchNormalization(name=f"{name}_bn{k}")(x)
            x = L.Activation("relu", name=f"{name}_relu{k}")(x)
        return x

    nb = [4, 8, 16, 32]
    inp = L.Input((None, None, 3), name="data")
    X = {}
    x = inp
    for i in range(4):
        if i:
            x = L.MaxPooling2D(2, name=f"pool{i}")(X[(i - 1, 0)])
        X[(i, 0)] = unit(x, nb[i], f"x{i}0")
    for j in range(1, 4):
        for i in range(0, 4 - j):
            up = L.UpSampling2D(2, name=f"up{i}{j}")(X[(i + 1, j - 1)])
            cat = L.Concatenate(name=f"merge{i}{j}")([up] + [X[(i, k)] for k in range(j)])
            X[(i, j)] = unit(cat, nb[i], f"x{i}{j}")
    out = L.Conv2D(1, 1, activation="sigmoid", name="output")(X[(0, 3)])
    return K.Model(inp, out, name="xnet")


# --------------------------------------------------------------------------- classification


def _grouped(K, x, grouped, cardinality, strides, act, lambda_code=False):
    """ResNeXt grouped 3x3 conv: slice channels per group (``x[:, :, :, a:b]``), conv each, concat."""
    L = K.layers
    outs = []
    for c in range(cardinality):
        a, b = c * grouped, (c + 1) * grouped
        if lambda_code:
            z = L.Lambda(lambda t, a=a, b=b: t[:, :, :, a:b])(x)
        else:
            z = x[:, :, :, a:b]
        outs.append(L.Conv2D(grouped, 3, padding="same", use_bias=False, strides=strides,
                             kernel_initializer="he_normal", kernel_regularizer=l2(K, 5e-4))(z))
    x = L.concatenate(outs, axis=-1)
    x = L.BatchNormalization(axis=-1)(x)
    return act()(x)


def _resnext(K, se=False, lambda_code=False):
    L = K.layers
    act = (lambda: L.LeakyReLU()) if se else (lambda: L.Activation("relu"))
    cardinality, width = 4, 2

    def conv(f, k=1, s=1):
        return L.Conv2D(f, k, padding="same", strides=s, use_bias=False,
                        kernel_initializer="he_normal", kernel_regularizer=l2(K, 5e-4))

    def block(x, filters, strides):
        init = x
        if x.shape[-1] != 2 * filters:
            init = conv(filters * 2, 1, strides)(x)
            init = L.BatchNormalization(axis=-1)(init)
        y = conv(filters)(x)
        y = L.BatchNormalization(axis=-1)(y)
        y = act()(y)
        y = _grouped(K, y, filters // cardinality, cardinality, strides, act, lambda_code)
        y = conv(filters * 2)(y)
        y = L.BatchNormalization(axis=-1)(y)
        if se:
            f = y.shape[-1]
            s = L.GlobalAveragePooling2D()(y)
            s = L.Reshape((1, 1, f))(s)
            s = L.Dense(max(f // 16, 1), activation="relu", kernel_initializer="he_normal", use_bias=False)(s)
            s = L.Dense(f, activation="sigmoid", kernel_initializer="he_normal", use_bias=False)(s)
            y = L.multiply([y, s])
        y = L.add([init, y])
        return act()(y)

    inp = L.Input((32, 32, 3), name="input_1")
    if se:  # initial_conv_block_inception
        x = L.Conv2D(8, 7, padding="same", use_bias=False, strides=2, kernel_initializer="he_normal",
                     kernel_regularizer=l2(K, 5e-4))(inp)
        x = L.BatchNormalization(axis=-1)(x)
        x = L.LeakyReLU()(x)
        x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    else:
        x = conv(8, 3)(inp)
        x = L.BatchNormalization(axis=-1)(x)
        x = L.Activation("relu")(x)
    filters = cardinality * width
    for i in range(3):
        x = block(x, filters, 1 if i == 0 else 2)
        filters *= 2
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(10, use_bias=False, kernel_regularizer=l2(K, 5e-4), kernel_initializer="he_normal",
                activation="softmax")(x)
    return K.Model(inp, x, name="se_resnext" if se else "resnext")


def arch_resnext(K):
    """titu1994/Keras-ResNeXt (via tf2onnx's test_resnext): grouped convolutions by channel slicing
    (recorded as SlicingOpLambda / GetItem nodes), depth [1, 1, 1], cardinality 4, width 2."""
    return _resnext(K)


def arch_resnext_lambda(K):
    """Same as ``resnext`` but with the original's ``Lambda(lambda z: z[:, :, :, a:b])`` layers
    (Python bytecode in the file: bnrewrite needs ``unsafe=True``)."""
    return _resnext(K, lambda_code=True)


def arch_se_resnext(K):
    """titu1994/keras-squeeze-excite-network SE-ResNeXt (via tf2onnx's test_resnext): inception-style
    stem, LeakyReLU() with the default alpha, squeeze-excite (GAP -> Reshape -> Dense -> Dense -> multiply)."""
    return _resnext(K, se=True)


def arch_resnet50_cf(K):
    """``resnet50`` as keras-applications builds it under ``image_data_format='channels_first'``
    (the Theano/CNTK-era setting): every conv/pool/pad with data_format='channels_first' and
    ``bn_axis = 1``; 3x64x64 input."""
    return arch_resnet50(K, cf=True)


def arch_resnet50(K, cf=False):
    """keras-team/keras-applications ``resnet50.py`` (the Keras 2.2.4-era ResNet50: conv1_pad,
    conv1, bn_conv1, conv_block/identity_block with BN axis 3), filters / 16, one conv block per
    stage plus one identity block in stage 2, 64x64 input."""
    L = K.layers
    df = "channels_first" if cf else "channels_last"
    ax = 1 if cf else 3

    def names(stage, block):
        return f"res{stage}{block}_branch", f"bn{stage}{block}_branch"

    def identity(x, k, filters, stage, block):
        f1, f2, f3 = filters
        cb, bb = names(stage, block)
        y = L.Conv2D(f1, 1, kernel_initializer="he_normal", data_format=df, name=cb + "2a")(x)
        y = L.BatchNormalization(axis=ax, name=bb + "2a")(y)
        y = L.Activation("relu")(y)
        y = L.Conv2D(f2, k, padding="same", kernel_initializer="he_normal", data_format=df, name=cb + "2b")(y)
        y = L.BatchNormalization(axis=ax, name=bb + "2b")(y)
        y = L.Activation("relu")(y)
        y = L.Conv2D(f3, 1, kernel_initializer="he_normal", data_format=df, name=cb + "2c")(y)
        y = L.BatchNormalization(axis=ax, name=bb + "2c")(y)
        y = L.add([y, x])
        return L.Activation("relu")(y)

    def conv_block(x, k, filters, stage, block, strides=2):
        f1, f2, f3 = filters
        cb, bb = names(stage, block)
        y = L.Conv2D(f1, 1, strides=strides, kernel_initializer="he_normal", data_format=df, name=cb + "2a")(x)
        y = L.BatchNormalization(axis=ax, name=bb + "2a")(y)
        y = L.Activation("relu")(y)
        y = L.Conv2D(f2, k, padding="same", kernel_initializer="he_normal", data_format=df, name=cb + "2b")(y)
        y = L.BatchNormalization(axis=ax, name=bb + "2b")(y)
        y = L.Activation("relu")(y)
        y = L.Conv2D(f3, 1, kernel_initializer="he_normal", data_format=df, name=cb + "2c")(y)
        y = L.BatchNormalization(axis=ax, name=bb + "2c")(y)
        s = L.Conv2D(f3, 1, strides=strides, kernel_initializer="he_normal", data_format=df, name=cb + "1")(x)
        s = L.BatchNormalization(axis=ax, name=bb + "1")(s)
        y = L.add([y, s])
        return L.Activation("relu")(y)

    inp = L.Input((3, 64, 64) if cf else (64, 64, 3), name="input_1")
    x = L.ZeroPadding2D(3, data_format=df, name="conv1_pad")(inp)
    x = L.Conv2D(4, 7, strides=2, padding="valid", kernel_initializer="he_normal", data_format=df, name="conv1")(x)
    x = L.BatchNormalization(axis=ax, name="bn_conv1")(x)
    x = L.Activation("relu")(x)
    x = L.ZeroPadding2D(1, data_format=df, name="pool1_pad")(x)
    x = L.MaxPooling2D(3, strides=2, data_format=df)(x)
    x = conv_block(x, 3, [4, 4, 16], 2, "a", strides=1)
    x = identity(x, 3, [4, 4, 16], 2, "b")
    x = conv_block(x, 3, [8, 8, 32], 3, "a")
    x = conv_block(x, 3, [16, 16, 64], 4, "a")
    x = conv_block(x, 3, [32, 32, 128], 5, "a")
    x = L.GlobalAveragePooling2D(data_format=df, name="avg_pool")(x)
    x = L.Dense(10, activation="softmax", name="fc1000")(x)
    return K.Model(inp, x, name="resnet50")


def arch_xception(K):
    """keras-team/keras ``applications/xception.py``: entry flow (strided 1x1 residuals around
    SeparableConv2D -> BN pairs), one middle-flow block, exit flow; filters / 8 (/ 16 at the end)."""
    L = K.layers
    inp = L.Input((64, 64, 3), name="input_1")
    x = L.Conv2D(4, 3, strides=2, use_bias=False, name="block1_conv1")(inp)
    x = L.BatchNormalization(name="block1_conv1_bn")(x)
    x = L.Activation("relu", name="block1_conv1_act")(x)
    x = L.Conv2D(8, 3, use_bias=False, name="block1_conv2")(x)
    x = L.BatchNormalization(name="block1_conv2_bn")(x)
    x = L.Activation("relu", name="block1_conv2_act")(x)
    for b, f, first_act in ((2, 16, False), (3, 32, True), (4, 91, True)):
        res = L.Conv2D(f, 1, strides=2, padding="same", use_bias=False)(x)
        res = L.BatchNormalization()(res)
        if first_act:
            x = L.Activation("relu", name=f"block{b}_sepconv1_act")(x)
        x = L.SeparableConv2D(f, 3, padding="same", use_bias=False, name=f"block{b}_sepconv1")(x)
        x = L.BatchNormalization(name=f"block{b}_sepconv1_bn")(x)
        x = L.Activation("relu", name=f"block{b}_sepconv2_act")(x)
        x = L.SeparableConv2D(f, 3, padding="same", use_bias=False, name=f"block{b}_sepconv2")(x)
        x = L.BatchNormalization(name=f"block{b}_sepconv2_bn")(x)
        x = L.MaxPooling2D(3, strides=2, padding="same", name=f"block{b}_pool")(x)
        x = L.add([x, res])
    res = x
    for i in (1, 2, 3):
        x = L.Activation("relu", name=f"block5_sepconv{i}_act")(x)
        x = L.SeparableConv2D(91, 3, padding="same", use_bias=False, name=f"block5_sepconv{i}")(x)
        x = L.BatchNormalization(name=f"block5_sepconv{i}_bn")(x)
    x = L.add([x, res])
    res = L.Conv2D(128, 1, strides=2, padding="same", use_bias=False)(x)
    res = L.BatchNormalization()(res)
    x = L.Activation("relu", name="block13_sepconv1_act")(x)
    x = L.SeparableConv2D(91, 3, padding="same", use_bias=False, name="block13_sepconv1")(x)
    x = L.BatchNormalization(name="block13_sepconv1_bn")(x)
    x = L.Activation("relu", name="block13_sepconv2_act")(x)
    x = L.SeparableConv2D(128, 3, padding="same", use_bias=False, name="block13_sepconv2")(x)
    x = L.BatchNormalization(name="block13_sepconv2_bn")(x)
    x = L.MaxPooling2D(3, strides=2, padding="same", name="block13_pool")(x)
    x = L.add([x, res])
    x = L.SeparableConv2D(96, 3, padding="same", use_bias=False, name="block14_sepconv1")(x)
    x = L.BatchNormalization(name="block14_sepconv1_bn")(x)
    x = L.Activation("relu", name="block14_sepconv1_act")(x)
    x = L.SeparableConv2D(128, 3, padding="same", use_bias=False, name="block14_sepconv2")(x)
    x = L.BatchNormalization(name="block14_sepconv2_bn")(x)
    x = L.Activation("relu", name="block14_sepconv2_act")(x)
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    x = L.Dense(10, activation="softmax", name="predictions")(x)
    return K.Model(inp, x, name="xception")


def arch_inception_v3(K):
    """keras-team/keras ``applications/inception_v3.py``: ``conv2d_bn`` = Conv2D (no bias) ->
    BN(axis=3, **scale=False**) -> ReLU; stem, mixed0 (35x35 block), mixed3 (reduction), mixed4
    (factorized 7x7), mixed8 (reduction), mixed9 (expanded 3x3 splits); filters / 8; 75x75 input."""
    L = K.layers
    n = [0]

    def cbn(x, f, r, c, padding="same", strides=1):
        n[0] += 1
        x = L.Conv2D(f, (r, c), strides=strides, padding=padding, use_bias=False, name=f"conv2d_{n[0]}")(x)
        x = L.BatchNormalization(axis=3, scale=False, name=f"batch_normalization_{n[0]}")(x)
        return L.Activation("relu", name=f"activation_{n[0]}")(x)

    inp = L.Input((75, 75, 3), name="input_1")
    x = cbn(inp, 4, 3, 3, strides=2, padding="valid")
    x = cbn(x, 4, 3, 3, padding="valid")
    x = cbn(x, 8, 3, 3)
    x = L.MaxPooling2D(3, strides=2)(x)
    x = cbn(x, 10, 1, 1, padding="valid")
    x = cbn(x, 24, 3, 3, padding="valid")
    x = L.MaxPooling2D(3, strides=2)(x)
    # mixed0
    b1 = cbn(x, 8, 1, 1)
    b5 = cbn(cbn(x, 6, 1, 1), 8, 5, 5)
    bd = cbn(cbn(cbn(x, 8, 1, 1), 12, 3, 3), 12, 3, 3)
    bp = cbn(L.AveragePooling2D(3, strides=1, padding="same")(x), 4, 1, 1)
    x = L.concatenate([b1, b5, bd, bp], axis=3, name="mixed0")
    # mixed3
    b3 = cbn(x, 48, 3, 3, strides=2, padding="valid")
    bd = cbn(cbn(cbn(x, 8, 1, 1), 12, 3, 3), 12, 3, 3, strides=2, padding="valid")
    bp = L.MaxPooling2D(3, strides=2)(x)
    x = L.concatenate([b3, bd, bp], axis=3, name="mixed3")
    # mixed4
    b1 = cbn(x, 24, 1, 1)
    b7 = cbn(cbn(cbn(x, 16, 1, 1), 16, 1, 7), 24, 7, 1)
    bd = cbn(x, 16, 1, 1)
    for r, c in ((7, 1), (1, 7), (7, 1)):
        bd = cbn(bd, 16, r, c)
    bd = cbn(bd, 24, 1, 7)
    bp = cbn(L.AveragePooling2D(3, strides=1, padding="same")(x), 24, 1, 1)
    x = L.concatenate([b1, b7, bd, bp], axis=3, name="mixed4")
    # mixed8
    b3 = cbn(cbn(x, 24, 1, 1), 40, 3, 3, strides=2, padding="valid")
    b7 = cbn(cbn(cbn(cbn(x, 24, 1, 1), 24, 1, 7), 24, 7, 1), 24, 3, 3, strides=2, padding="valid")
    bp = L.MaxPooling2D(3, strides=2)(x)
    x = L.concatenate([b3, b7, bp], axis=3, name="mixed8")
    # mixed9
    b1 = cbn(x, 40, 1, 1)
    b3 = cbn(x, 48, 1, 1)
    b3 = L.concatenate([cbn(b3, 48, 1, 3), cbn(b3, 48, 3, 1)], axis=3, name="mixed9_0")
    bd = cbn(cbn(x, 56, 1, 1), 48, 3, 3)
    bd = L.concatenate([cbn(bd, 48, 1, 3), cbn(bd, 48, 3, 1)], axis=3)
    bp = cbn(L.AveragePooling2D(3, strides=1, padding="same")(x), 24, 1, 1)
    x = L.concatenate([b1, b3, bd, bp], axis=3, name="mixed9")
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    x = L.Dense(10, activation="softmax", name="predictions")(x)
    return K.Model(inp, x, name="inception_v3")


def arch_mobilenet_v1(K):
    """``applications.MobileNet(alpha=0.25, weights=None)`` at 32x32 (ReLU(6.), DepthwiseConv2D, BN)."""
    return K.applications.MobileNet(input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=10)


def arch_mobilenet_v2(K):
    """``applications.MobileNetV2(alpha=0.35, weights=None)`` at 32x32."""
    return K.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)


def arch_mobilenet_v3_small(K):
    """``applications.MobileNetV3Small(alpha=0.75, weights=None)`` at 32x32: in tf_keras its
    hard-sigmoid/hard-swish are raw ops on Keras tensors (``x + 3.0``, ``* (1.0 / 6.0)``: TFOpLambda)."""
    return K.applications.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.75, weights=None, classes=10)


def arch_nasnet(K):
    """``applications.nasnet.NASNet`` (the generic constructor behind NASNetMobile/Large) with
    penultimate_filters=96, num_blocks=1, stem_block_filters=8, at 32x32."""
    return app_module(K, "nasnet").NASNet(input_shape=(32, 32, 3), penultimate_filters=96, num_blocks=1,
                                          stem_block_filters=8, skip_reduction=False, weights=None,
                                          classes=10, default_size=32)


def arch_densenet(K):
    """``applications.densenet.DenseNet(blocks=[1, 1, 1, 1])`` at 32x32 (pre-activation BN-ReLU-Conv)."""
    return app_module(K, "densenet").DenseNet([1, 1, 1, 1], input_shape=(32, 32, 3), weights=None, classes=10)


def arch_efficientnet(K):
    """``applications.efficientnet.EfficientNet(width 0.1, depth 0.1)`` at 32x32 (Rescaling,
    Normalization, swish, depthwise convs, squeeze-excite with Reshape/multiply)."""
    return app_module(K, "efficientnet").EfficientNet(0.1, 0.1, 32, input_shape=(32, 32, 3), weights=None,
                                                      classes=10)


def arch_efficientnet_v2(K):
    """``applications.efficientnet_v2.EfficientNetV2(width 0.25, depth 0.1)`` at 32x32 (the B0 block
    table: fused MBConv, squeeze-excite, swish). tf_keras records its head's bias initializer as
    ``tf.constant_initializer``, under TensorFlow's own module (``init_ops_v2``)."""
    mod = app_module(K, "efficientnet_v2")
    return mod.EfficientNetV2(0.25, 0.1, 32, input_shape=(32, 32, 3), weights=None, classes=10,
                              blocks_args=mod.DEFAULT_BLOCKS_ARGS["efficientnetv2-b0"])


def arch_regnet(K):
    """tf_keras ``applications.regnet.RegNet`` (the generic constructor behind RegNetX/Y) as a small
    RegNetY: one block per stage, widths 24/56/152/368, group width 8 (grouped 3x3 convolutions:
    3 to 46 groups) and squeeze-excite, at 32x32. Keras 3 has no RegNet."""
    return app_module(K, "regnet").RegNet([1, 1, 1, 1], [24, 56, 152, 368], 8, "Y", 32, model_name="regnety",
                                          input_shape=(32, 32, 3), weights=None, classes=10)


def arch_teachable_machine(K):
    """Teachable Machine image-project export (googlecreativelab/teachablemachine-community,
    ``keras_model.h5``): Sequential[ Sequential[ MobileNetV2 body (alpha 0.35, up to out_relu,
    a nested Functional 'model1'), GlobalAveragePooling2D ], Sequential[ Dense(100, relu),
    Dense(n, softmax, use_bias=False) ] ]; 32x32 input, 100 -> 16 units."""
    L = K.layers
    base = K.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    body = K.Model(base.inputs, base.get_layer("out_relu").output, name="model1")
    feat = K.Sequential([body, L.GlobalAveragePooling2D(name="global_average_pooling2d_GlobalAveragePooling2D1")],
                        name="sequential_1")
    head = K.Sequential([L.Dense(16, activation="relu", name="dense_Dense1"),
                         L.Dense(3, activation="softmax", use_bias=False, name="dense_Dense2")], name="sequential_3")
    return K.Sequential([K.Input((32, 32, 3)), feat, head], name="sequential_4")


# --------------------------------------------------------------------------- sequences / speech / text


def arch_mlstm_fcn(K):
    """titu1994/MLSTM-FCN (via tf2onnx's test_mlstm_fcn): Masking -> LSTM(8) -> Dropout(0.8) in
    parallel with Permute -> 3 x (Conv1D -> BN -> ReLU) with squeeze-excite, concat, softmax;
    the LSTM keeps Keras 2's default recurrent_activation='hard_sigmoid'; filters / 8."""
    L = K.layers

    def se(x):
        f = x.shape[-1]
        s = L.GlobalAveragePooling1D()(x)
        s = L.Reshape((1, f))(s)
        s = L.Dense(f // 16, activation="relu", kernel_initializer="he_normal", use_bias=False)(s)
        s = L.Dense(f, activation="sigmoid", kernel_initializer="he_normal", use_bias=False)(s)
        return L.multiply([x, s])

    ip = L.Input((20, 5), name="input_1")
    x = L.Masking()(ip)
    x = L.LSTM(8, recurrent_activation="hard_sigmoid")(x)
    x = L.Dropout(0.8)(x)
    y = L.Permute((2, 1))(ip)
    for f, k, use_se in ((16, 8, True), (32, 5, True), (16, 3, False)):
        y = L.Conv1D(f, k, padding="same", kernel_initializer="he_uniform")(y)
        y = L.BatchNormalization()(y)
        y = L.Activation("relu")(y)
        if use_se:
            y = se(y)
    y = L.GlobalAveragePooling1D()(y)
    x = L.concatenate([x, y])
    out = L.Dense(10, activation="softmax")(x)
    return K.Model(ip, out, name="mlstm_fcn")


def arch_deep_speech2(K):
    """rolczynski/Automatic-Speech-Recognition ``deepspeech2`` (via tf2onnx's test_deep_speech):
    open time axis, expand_dims (the original's ``Lambda(K.expand_dims)``; here a raw op node), two
    Conv2D (no bias) -> BN -> ReLU, Reshape, 2 x Bidirectional(GRU(reset_after=True)), TimeDistributed
    Dense; units / 50."""
    L = K.layers
    o = ops(K)
    inp = L.Input((None, 20), name="X")
    x = o.expand_dims(inp, -1)
    x = L.Conv2D(8, (11, 41), strides=(2, 2), padding="same", use_bias=False, name="conv_1")(x)
    x = L.BatchNormalization(name="conv_1_bn")(x)
    x = L.ReLU(name="conv_1_relu")(x)
    x = L.Conv2D(8, (11, 21), strides=(1, 2), padding="same", use_bias=False, name="conv_2")(x)
    x = L.BatchNormalization(name="conv_2_bn")(x)
    x = L.ReLU(name="conv_2_relu")(x)
    x = L.Reshape((-1, 20 // 4 * 8))(x)
    for i in (1, 2):
        rnn = L.GRU(16, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                    return_sequences=True, reset_after=True, name=f"gru_{i}")
        x = L.Bidirectional(rnn, name=f"bidirectional{i}", merge_mode="concat")(x)
        if i < 2:
            x = L.Dropout(0.5)(x)
    x = L.TimeDistributed(L.Dense(32), name="dense_1")(x)
    x = L.ReLU(name="dense_1_relu")(x)
    x = L.Dropout(0.5)(x)
    out = L.TimeDistributed(L.Dense(10), name="dense_2")(x)
    return K.Model(inp, out, name="DeepSpeech2")


def arch_deep_speaker(K):
    """philipperemy/deep-speaker ``DeepSpeakerModel`` (via tf2onnx's test_deep_speaker): conv(5x5, s2)
    -> BN -> clipped ReLU + identity blocks per stage, Reshape((-1, C)), temporal mean, Dense
    'affine', L2 normalisation. The original's clipped ReLU / mean / l2_normalize are Lambdas; here
    they are raw op nodes (tf.minimum(tf.maximum(x, 0), 20), reduce_mean, l2_normalize). Open time
    axis, 16 filterbanks, filters / 8, one identity block per stage."""
    L = K.layers
    o = ops(K)

    def crelu(x):
        return o.minimum(o.maximum(x, 0.0), 20.0)

    def identity(x, f, stage, block):
        base = f"res{stage}_{block}_branch"
        y = L.Conv2D(f, 3, padding="same", kernel_regularizer=l2(K, 1e-4), name=base + "_2a")(x)
        y = L.BatchNormalization(name=base + "_2a_bn")(y)
        y = crelu(y)
        y = L.Conv2D(f, 3, padding="same", kernel_regularizer=l2(K, 1e-4), name=base + "_2b")(y)
        y = L.BatchNormalization(name=base + "_2b_bn")(y)
        y = crelu(y)
        return crelu(L.add([y, x]))

    inp = L.Input((None, 16, 1), name="input")
    x = inp
    for stage, f in enumerate((8, 16, 32, 64), start=1):
        x = L.Conv2D(f, 5, strides=2, padding="same", kernel_regularizer=l2(K, 1e-4), name=f"conv{f}-s")(x)
        x = L.BatchNormalization(name=f"conv{f}-s_bn")(x)
        x = crelu(x)
        x = identity(x, f, stage, 0)
    x = L.Reshape((-1, 64))(x)
    x = o.mean(x, 1)
    x = L.Dense(32, name="affine")(x)
    x = o.l2norm(x, 1)
    return K.Model(inp, x, name="ResCNN")


def arch_vui_cudnn(K):
    """udacity/AIND-VUI-Capstone ``sample_models.py`` (the Udacity speech-recognition project; many
    public forks complete it with ``CuDNNGRU``/``CuDNNLSTM``): open time axis of spectrogram frames,
    Conv1D(relu, stride 2, 'valid') -> BN 'bn_conv_1d' -> GRU(return_sequences) -> BN (the
    project's ``deep_rnn_model`` puts a BN after each recurrent layer) -> Bidirectional(LSTM) -> BN ->
    TimeDistributed(Dense(29)) -> softmax. Built with the standard layers in cuDNN's function
    (tanh/sigmoid, GRU reset_after); the ``keras-2.2.4-cudnn`` variant stores them as the CuDNN
    layers. 20 features instead of 161, units / 25."""
    L = K.layers
    inp = L.Input((None, 20), name="the_input")
    x = L.Conv1D(16, 11, strides=2, padding="valid", activation="relu", name="conv1d")(inp)
    x = L.BatchNormalization(name="bn_conv_1d")(x)
    x = L.GRU(8, return_sequences=True, reset_after=True, recurrent_activation="sigmoid", name="rnn")(x)
    x = L.BatchNormalization(name="bn_rnn")(x)
    x = L.Bidirectional(L.LSTM(8, return_sequences=True, recurrent_activation="sigmoid"), name="bidir_rnn")(x)
    x = L.BatchNormalization(name="bn_bidir")(x)
    x = L.TimeDistributed(L.Dense(29), name="time_dense")(x)
    out = L.Activation("softmax", name="softmax")(x)
    return K.Model(inp, out)


def arch_crnn_ocr(K):
    """faustomorales/keras-ocr ``build_model`` backbone (via tf2onnx's test_ocr, without the spatial
    transformer): Permute((2, 1, 3)), width reversal ``x[:, :, ::-1]``, Conv -> BN blocks, Reshape,
    forward/backward LSTM pairs (go_backwards) merged by Add and Concatenate, softmax, and
    ``x[:, rnn_steps_to_discard:]``; 16x64 grey input, filters / 16."""
    L = K.layers
    inp = L.Input((16, 64, 1), name="input_1")
    x = L.Permute((2, 1, 3))(inp)
    x = x[:, :, ::-1]
    x = L.Conv2D(4, 3, activation="relu", padding="same", name="conv_1")(x)
    x = L.Conv2D(8, 3, activation="relu", padding="same", name="conv_2")(x)
    x = L.Conv2D(8, 3, activation="relu", padding="same", name="conv_3")(x)
    x = L.BatchNormalization(name="bn_3")(x)
    x = L.MaxPooling2D(2, name="maxpool_3")(x)
    x = L.Conv2D(8, 3, activation="relu", padding="same", name="conv_4")(x)
    x = L.Conv2D(16, 3, activation="relu", padding="same", name="conv_5")(x)
    x = L.BatchNormalization(name="bn_5")(x)
    x = L.MaxPooling2D(2, name="maxpool_5")(x)
    x = L.Conv2D(16, 3, activation="relu", padding="same", name="conv_6")(x)
    x = L.Conv2D(16, 3, activation="relu", padding="same", name="conv_7")(x)
    x = L.BatchNormalization(name="bn_7")(x)
    x = L.Reshape((64 // 4, (16 // 4) * 16), name="reshape")(x)
    x = L.Dense(16, activation="relu", name="fc_9")(x)
    f1 = L.LSTM(8, kernel_initializer="he_normal", return_sequences=True, name="lstm_10")(x)
    b1 = L.LSTM(8, kernel_initializer="he_normal", go_backwards=True, return_sequences=True, name="lstm_10_back")(x)
    x = L.Add()([f1, b1])
    f2 = L.LSTM(8, kernel_initializer="he_normal", return_sequences=True, name="lstm_11")(x)
    b2 = L.LSTM(8, kernel_initializer="he_normal", go_backwards=True, return_sequences=True, name="lstm_11_back")(x)
    x = L.Concatenate()([f2, b2])
    x = L.Dropout(0.25, name="dropout")(x)
    x = L.Dense(12, kernel_initializer="he_normal", activation="softmax", name="fc_12")(x)
    x = x[:, 2:]
    return K.Model(inp, x, name="crnn")


def arch_lipnet(K):
    """rizkiarm/LipNet ``LipNet.build``: 3 x (ZeroPadding3D -> Conv3D -> BN -> ReLU ->
    SpatialDropout3D -> MaxPooling3D), TimeDistributed(Flatten), 2 x Bidirectional(GRU, Orthogonal
    init, reset_after=False and recurrent_activation='hard_sigmoid' as in the Keras 2.0 original),
    Dense -> softmax; 8 frames of 16x32x3,
    filters / 8, GRU 256 -> 8."""
    L = K.layers
    inp = L.Input((8, 16, 32, 3), name="the_input")
    x = inp
    for i, (f, k, s) in enumerate(((4, (3, 5, 5), (1, 2, 2)), (8, (3, 5, 5), (1, 1, 1)), (8, (3, 3, 3), (1, 1, 1))),
                                  start=1):
        pad = (1, 2, 2) if k[1] == 5 else (1, 1, 1)
        x = L.ZeroPadding3D(padding=pad, name=f"zero{i}")(x)
        x = L.Conv3D(f, k, strides=s, kernel_initializer="he_normal", name=f"conv{i}")(x)
        x = L.BatchNormalization(name=f"batc{i}")(x)
        x = L.Activation("relu", name=f"actv{i}")(x)
        x = L.SpatialDropout3D(0.5)(x)
        x = L.MaxPooling3D(pool_size=(1, 2, 2), strides=(1, 2, 2), name=f"max{i}")(x)
    x = L.TimeDistributed(L.Flatten())(x)
    for i in (1, 2):
        x = L.Bidirectional(L.GRU(8, return_sequences=True, kernel_initializer="Orthogonal", reset_after=False,
                                  recurrent_activation="hard_sigmoid", name=f"gru{i}"), merge_mode="concat")(x)
    x = L.Dense(12, kernel_initializer="he_normal", name="dense1")(x)
    x = L.Activation("softmax", name="softmax")(x)
    return K.Model(inp, x, name="lipnet")


def arch_cnn_lstm_td(K):
    """CNN-LSTM video classifier in the LRCN style of harvitronix/five-video-classification-methods
    (``lrcn``: a Sequential of TimeDistributed Conv2D/MaxPooling2D, TimeDistributed(Flatten), LSTM)
    with the TimeDistributed(BatchNormalization) after each TimeDistributed(Conv2D) that
    maelfabien/Multimodal-Emotion-Recognition's time-distributed ConvNet uses; the LSTM keeps Keras
    2's default recurrent_activation='hard_sigmoid'; 6 frames of 32x32x3."""
    L = K.layers
    TD = L.TimeDistributed
    return K.Sequential([
        K.Input((6, 32, 32, 3)),
        TD(L.Conv2D(8, (7, 7), strides=(2, 2), padding="same")),
        TD(L.BatchNormalization()),
        TD(L.Activation("relu")),
        TD(L.Conv2D(8, (3, 3), kernel_initializer="he_normal")),
        TD(L.BatchNormalization()),
        TD(L.Activation("relu")),
        TD(L.MaxPooling2D((2, 2), strides=(2, 2))),
        TD(L.Conv2D(16, (3, 3), padding="same")),
        TD(L.BatchNormalization()),
        TD(L.Activation("relu")),
        TD(L.MaxPooling2D((2, 2), strides=(2, 2))),
        TD(L.Flatten()),
        L.Dropout(0.5),
        L.LSTM(16, return_sequences=False, dropout=0.5, recurrent_activation="hard_sigmoid"),
        L.Dense(5, activation="softmax"),
    ], name="lrcn")


def arch_td_speech_emotion(K):
    """maelfabien/Multimodal-Emotion-Recognition time-distributed ConvNet for speech emotion
    (log-mel spectrogram windows): per window TimeDistributed Conv2D -> BN -> ELU -> MaxPooling2D
    -> Dropout ("LFLB" blocks, named Conv_i/BatchNorm_i/...), TimeDistributed(Flatten), LSTM,
    softmax. The number of windows is open (None); 16x16 windows, 2 blocks, filters / 8."""
    L = K.layers
    TD = L.TimeDistributed
    inp = L.Input((None, 16, 16, 1), name="Input_MELSPECT")
    y = inp
    for i, f in ((1, 8), (2, 16)):
        y = TD(L.Conv2D(f, (3, 3), strides=(1, 1), padding="same"), name=f"Conv_{i}")(y)
        y = TD(L.BatchNormalization(), name=f"BatchNorm_{i}")(y)
        y = TD(L.Activation("elu"), name=f"Activ_{i}")(y)
        y = TD(L.MaxPooling2D(pool_size=(2, 2), strides=(2, 2), padding="same"), name=f"MaxPool_{i}")(y)
        y = TD(L.Dropout(0.2), name=f"Drop_{i}")(y)
    y = TD(L.Flatten(), name="Flat")(y)
    y = L.LSTM(16, return_sequences=False, dropout=0.2, name="LSTM1")(y)
    y = L.Dense(7, activation="softmax", name="FC")(y)
    return K.Model(inp, y, name="td_speech_emotion")


def arch_convlstm(K):
    """keras-team/keras ``examples/conv_lstm.py`` (Keras 2): ConvLSTM2D -> BN stacks on an open
    number of frames, Conv3D(sigmoid) head; ``recurrent_activation='hard_sigmoid'`` (the Keras 2
    default, written explicitly so that the Keras 3 port keeps it); 40 -> 8 filters, 16x16 frames."""
    L = K.layers
    layers = [K.Input((None, 16, 16, 1))]
    for _ in range(3):
        layers += [L.ConvLSTM2D(filters=8, kernel_size=(3, 3), padding="same", return_sequences=True,
                                recurrent_activation="hard_sigmoid"),
                   L.BatchNormalization()]
    layers.append(L.Conv3D(filters=1, kernel_size=(3, 3, 3), activation="sigmoid", padding="same",
                           data_format="channels_last"))
    return K.Sequential(layers, name="conv_lstm")


def arch_bilstm_imdb(K):
    """keras-team/keras ``examples/imdb_bidirectional_lstm.py``: Embedding -> Bidirectional(LSTM)
    -> Dropout(0.5) -> Dense(sigmoid), with a BatchNormalization after the Bidirectional (added:
    the example has none); the LSTM keeps Keras 2's default ``recurrent_activation='hard_sigmoid'``;
    vocabulary 2000, 16 dims, LSTM 8, sequences of 24."""
    L = K.layers
    return K.Sequential([
        K.Input((24,), dtype="int32"),
        L.Embedding(2000, 16),
        L.Bidirectional(L.LSTM(8, recurrent_activation="hard_sigmoid")),
        L.BatchNormalization(),
        L.Dropout(0.5),
        L.Dense(1, activation="sigmoid"),
    ], name="imdb_bilstm")


def arch_embedding_cnn(K):
    """keras-team/keras ``examples/imdb_cnn.py``: Embedding -> Dropout -> Conv1D(relu) ->
    GlobalMaxPooling1D -> Dense -> Dropout -> ReLU -> Dense(sigmoid), with BatchNormalization after
    the Conv1D and after the hidden Dense (added); vocabulary 2000, 16 dims, sequences of 40."""
    L = K.layers
    return K.Sequential([
        K.Input((40,), dtype="int32"),
        L.Embedding(2000, 16),
        L.Dropout(0.2),
        L.Conv1D(16, 3, padding="valid", activation="relu", strides=1),
        L.BatchNormalization(),
        L.GlobalMaxPooling1D(),
        L.Dense(16),
        L.BatchNormalization(),
        L.Dropout(0.2),
        L.Activation("relu"),
        L.Dense(1),
        L.Activation("sigmoid"),
    ], name="imdb_cnn")


def arch_masking_bn_seq(K):
    """A masked sequence tagger in the style of MLSTM-FCN's Masking input and the Keras masking
    guide: Masking(0.) -> LSTM(return_sequences) -> BatchNormalization called with the mask
    (``mask=``, computed from the input with raw ops) -> TimeDistributed(Dense); 10 steps of 6
    features, the last steps of each sample zeroed."""
    L = K.layers
    o = ops(K)
    inp = L.Input((10, 6), name="features")
    m = o.not_equal(o.sum(o.abs(inp), -1), 0.0)
    x = L.Masking(0.0)(inp)
    x = L.LSTM(8, return_sequences=True)(x)
    x = L.BatchNormalization(name="bn_masked")(x, mask=m)
    x = L.TimeDistributed(L.Dense(4))(x)
    return K.Model(inp, x, name="masked_tagger")


def arch_multi_io(K):
    """The Keras functional-API guide's multi-input/multi-output ticket model (keras-io
    ``guides/functional_api.py``): title/body token sequences (open length) -> Embedding -> LSTM,
    tags vector; concatenated -> BatchNormalization (added) -> priority (Dense 1) and department
    (Dense 4) heads."""
    L = K.layers
    title = L.Input((None,), name="title", dtype="int32")
    body = L.Input((None,), name="body", dtype="int32")
    tags = L.Input((12,), name="tags")
    t = L.LSTM(16)(L.Embedding(1000, 16)(title))
    b = L.LSTM(8)(L.Embedding(1000, 16)(body))
    x = L.concatenate([t, b, tags])
    x = L.BatchNormalization()(x)
    priority = L.Dense(1, name="priority")(x)
    department = L.Dense(4, name="department")(x)
    return K.Model([title, body, tags], [priority, department], name="ticket_classifier")


def arch_siamese(K):
    """keras-io ``examples/vision/siamese_contrastive.py``: a shared embedding network (BN -> Conv
    tanh -> AvgPool -> Conv tanh -> AvgPool -> Flatten -> BN -> Dense tanh) called on both inputs,
    euclidean distance (the original's Lambda; here raw op nodes), BatchNormalization, Dense(sigmoid)."""
    L = K.layers
    o = ops(K)
    e_in = L.Input((28, 28, 1))
    x = L.BatchNormalization()(e_in)
    x = L.Conv2D(4, (5, 5), activation="tanh")(x)
    x = L.AveragePooling2D(pool_size=(2, 2))(x)
    x = L.Conv2D(16, (5, 5), activation="tanh")(x)
    x = L.AveragePooling2D(pool_size=(2, 2))(x)
    x = L.Flatten()(x)
    x = L.BatchNormalization()(x)
    x = L.Dense(10, activation="tanh")(x)
    embedding = K.Model(e_in, x, name="embedding")
    in1 = L.Input((28, 28, 1), name="left")
    in2 = L.Input((28, 28, 1), name="right")
    t1, t2 = embedding(in1), embedding(in2)
    d = o.sqrt(o.maximum(o.sum(o.square(t1 - t2), 1, keepdims=True), 1e-7))
    d = L.BatchNormalization()(d)
    out = L.Dense(1, activation="sigmoid")(d)
    return K.Model([in1, in2], out, name="siamese")


def arch_tfop_mix(K):
    """Raw TensorFlow ops on Keras tensors, as tf.keras users write them (and as tf_keras records
    them: TFOpLambda / SlicingOpLambda): ``x * 2.0``, ``tf.nn.relu6``, ``x + 3.0``, slicing
    ``x[:, 1:]``, ``tf.concat``, ``tf.reduce_mean`` around Conv -> BN blocks; patterns from tf_keras
    MobileNetV3 (hard-swish), keras-ocr (slicing) and deep-speaker (reductions)."""
    L = K.layers
    o = ops(K)
    inp = L.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, padding="same")(inp)
    x = L.BatchNormalization()(x)
    x = x * 2.0
    x = o.relu6(x + 3.0) * (1.0 / 6.0)
    y = L.Conv2D(8, 3, padding="same")(x)
    y = L.BatchNormalization()(y)
    y = o.relu6(y)
    z = o.concat([x[:, 1:], y[:, 1:]], axis=-1)
    z = L.Conv2D(8, 1)(z)
    z = L.BatchNormalization()(z)
    z = o.mean(z, [1, 2])
    out = L.Dense(4)(z)
    return K.Model(inp, out, name="tfop_mix")


# --------------------------------------------------------------------------- generative


def arch_dcgan(K):
    """eriklindernoren/Keras-GAN ``dcgan``: generator (Dense -> Reshape -> UpSampling2D -> Conv ->
    BN(momentum=0.8) -> ReLU ...) and discriminator (Conv s2 -> LeakyReLU(alpha=0.2) -> Dropout ->
    ZeroPadding2D -> BN(0.8) ...), each a Sequential wrapped in a Model, stacked as the frozen-
    discriminator ``combined`` model that the script trains; filters / 8, latent 16, 28x28x1."""
    L = K.layers
    latent, shape = 16, (28, 28, 1)
    g = K.Sequential([
        K.Input((latent,)),
        L.Dense(16 * 7 * 7, activation="relu"),
        L.Reshape((7, 7, 16)),
        L.UpSampling2D(),
        L.Conv2D(16, kernel_size=3, padding="same"),
        L.BatchNormalization(momentum=0.8),
        L.Activation("relu"),
        L.UpSampling2D(),
        L.Conv2D(8, kernel_size=3, padding="same"),
        L.BatchNormalization(momentum=0.8),
        L.Activation("relu"),
        L.Conv2D(1, kernel_size=3, padding="same"),
        L.Activation("tanh"),
    ], name="generator_seq")
    noise = L.Input((latent,), name="noise")
    generator = K.Model(noise, g(noise), name="generator")
    d = K.Sequential([
        K.Input(shape),
        L.Conv2D(4, kernel_size=3, strides=2, padding="same"),
        leaky(K, 0.2),
        L.Dropout(0.25),
        L.Conv2D(8, kernel_size=3, strides=2, padding="same"),
        L.ZeroPadding2D(padding=((0, 1), (0, 1))),
        L.BatchNormalization(momentum=0.8),
        leaky(K, 0.2),
        L.Dropout(0.25),
        L.Conv2D(16, kernel_size=3, strides=2, padding="same"),
        L.BatchNormalization(momentum=0.8),
        leaky(K, 0.2),
        L.Dropout(0.25),
        L.Conv2D(32, kernel_size=3, strides=1, padding="same"),
        L.BatchNormalization(momentum=0.8),
        leaky(K, 0.2),
        L.Dropout(0.25),
        L.Flatten(),
        L.Dense(1, activation="sigmoid"),
    ], name="discriminator_seq")
    img = L.Input(shape, name="img")
    discriminator = K.Model(img, d(img), name="discriminator")
    discriminator.trainable = False
    z = L.Input((latent,), name="z")
    return K.Model(z, discriminator(generator(z)), name="combined")


def arch_acgan(K):
    """eriklindernoren/Keras-GAN ``acgan``: generator conditioned by ``multiply([noise,
    Flatten(Embedding(num_classes, latent)(label))])`` (BN(0.8) after Reshape and after each conv),
    discriminator with two heads (validity, class softmax); combined model with two inputs (float
    noise, int label) and two outputs; filters / 8, latent 16, 28x28x1, 10 classes."""
    L = K.layers
    latent, ncls, shape = 16, 10, (28, 28, 1)
    gs = K.Sequential([
        K.Input((latent,)),
        L.Dense(16 * 7 * 7, activation="relu"),
        L.Reshape((7, 7, 16)),
        L.BatchNormalization(momentum=0.8),
        L.UpSampling2D(),
        L.Conv2D(16, kernel_size=3, padding="same"),
        L.Activation("relu"),
        L.BatchNormalization(momentum=0.8),
        L.UpSampling2D(),
        L.Conv2D(8, kernel_size=3, padding="same"),
        L.Activation("relu"),
        L.BatchNormalization(momentum=0.8),
        L.Conv2D(1, kernel_size=3, padding="same"),
        L.Activation("tanh"),
    ], name="gen_seq")
    noise = L.Input((latent,), name="noise")
    label = L.Input((1,), dtype="int32", name="label")
    emb = L.Flatten()(L.Embedding(ncls, latent)(label))
    generator = K.Model([noise, label], gs(L.multiply([noise, emb])), name="generator")
    ds = K.Sequential([
        K.Input(shape),
        L.Conv2D(2, kernel_size=3, strides=2, padding="same"),
        leaky(K, 0.2),
        L.Dropout(0.25),
        L.Conv2D(4, kernel_size=3, strides=2, padding="same"),
        L.ZeroPadding2D(padding=((0, 1), (0, 1))),
        leaky(K, 0.2),
        L.Dropout(0.25),
        L.BatchNormalization(momentum=0.8),
        L.Conv2D(8, kernel_size=3, strides=2, padding="same"),
        leaky(K, 0.2),
        L.Dropout(0.25),
        L.BatchNormalization(momentum=0.8),
        L.Conv2D(16, kernel_size=3, strides=1, padding="same"),
        leaky(K, 0.2),
        L.Dropout(0.25),
        L.Flatten(),
    ], name="disc_seq")
    img = L.Input(shape, name="img")
    feats = ds(img)
    validity = L.Dense(1, activation="sigmoid")(feats)
    cls = L.Dense(ncls, activation="softmax")(feats)
    discriminator = K.Model(img, [validity, cls], name="discriminator")
    discriminator.trainable = False
    n2 = L.Input((latent,), name="z")
    l2_ = L.Input((1,), dtype="int32", name="target_label")
    valid, target = discriminator(generator([n2, l2_]))
    return K.Model([n2, l2_], [valid, target], name="acgan_combined")


def arch_pix2pix(K):
    """eriklindernoren/Keras-GAN ``pix2pix`` U-Net generator: ``conv2d`` = Conv(4, s2) ->
    LeakyReLU(alpha=0.2) -> BN(0.8) (no BN on the first), ``deconv2d`` = UpSampling2D -> Conv(4,
    relu) -> [Dropout] -> BN(0.8) -> Concatenate(skip); 32x32x3, 5 levels, gf 64 -> 4."""
    L = K.layers

    def down(x, f, bn=True):
        d = L.Conv2D(f, kernel_size=4, strides=2, padding="same")(x)
        d = leaky(K, 0.2)(d)
        if bn:
            d = L.BatchNormalization(momentum=0.8)(d)
        return d

    def up(x, skip, f, dropout=0.0):
        u = L.UpSampling2D(size=2)(x)
        u = L.Conv2D(f, kernel_size=4, strides=1, padding="same", activation="relu")(u)
        if dropout:
            u = L.Dropout(dropout)(u)
        u = L.BatchNormalization(momentum=0.8)(u)
        return L.Concatenate()([u, skip])

    d0 = L.Input((32, 32, 3), name="input_A")
    gf = 4
    d1 = down(d0, gf, bn=False)
    d2 = down(d1, gf * 2)
    d3 = down(d2, gf * 4)
    d4 = down(d3, gf * 8)
    d5 = down(d4, gf * 8)
    u1 = up(d5, d4, gf * 8, 0.5)
    u2 = up(u1, d3, gf * 4)
    u3 = up(u2, d2, gf * 2)
    u4 = up(u3, d1, gf)
    u5 = L.UpSampling2D(size=2)(u4)
    out = L.Conv2D(3, kernel_size=4, strides=1, padding="same", activation="tanh")(u5)
    return K.Model(d0, out, name="pix2pix_generator")


def arch_srgan(K):
    """eriklindernoren/Keras-GAN ``srgan`` generator: Conv 9x9 -> ReLU, residual blocks (Conv ->
    ReLU -> BN(0.8) -> Conv -> BN(0.8) -> Add), Conv -> BN(0.8) -> Add(long skip), 2 x (UpSampling2D
    -> Conv -> ReLU), Conv 9x9 tanh; open spatial input (fully convolutional), 16 -> 2 residual
    blocks, filters 64 -> 8."""
    L = K.layers
    gf = 8

    def res(x):
        d = L.Conv2D(gf, kernel_size=3, strides=1, padding="same")(x)
        d = L.Activation("relu")(d)
        d = L.BatchNormalization(momentum=0.8)(d)
        d = L.Conv2D(gf, kernel_size=3, strides=1, padding="same")(d)
        d = L.BatchNormalization(momentum=0.8)(d)
        return L.Add()([d, x])

    img = L.Input((None, None, 3), name="img_lr")
    c1 = L.Conv2D(gf, kernel_size=9, strides=1, padding="same")(img)
    c1 = L.Activation("relu")(c1)
    r = c1
    for _ in range(2):
        r = res(r)
    c2 = L.Conv2D(gf, kernel_size=3, strides=1, padding="same")(r)
    c2 = L.BatchNormalization(momentum=0.8)(c2)
    c2 = L.Add()([c2, c1])
    u = c2
    for _ in range(2):
        u = L.UpSampling2D(size=2)(u)
        u = L.Conv2D(16, kernel_size=3, strides=1, padding="same")(u)
        u = L.Activation("relu")(u)
    out = L.Conv2D(3, kernel_size=9, strides=1, padding="same", activation="tanh")(u)
    return K.Model(img, out, name="srgan_generator")


def arch_tf_dcgan_generator(K):
    """tensorflow/docs ``tutorials/generative/dcgan.ipynb`` ``make_generator_model``: Dense (no bias)
    -> BN -> LeakyReLU -> Reshape -> Conv2DTranspose (no bias) -> BN -> LeakyReLU ... -> tanh;
    filters / 8, noise 100 -> 16."""
    L = K.layers
    return K.Sequential([
        K.Input((16,)),
        L.Dense(7 * 7 * 32, use_bias=False),
        L.BatchNormalization(),
        L.LeakyReLU(),
        L.Reshape((7, 7, 32)),
        L.Conv2DTranspose(16, (5, 5), strides=(1, 1), padding="same", use_bias=False),
        L.BatchNormalization(),
        L.LeakyReLU(),
        L.Conv2DTranspose(8, (5, 5), strides=(2, 2), padding="same", use_bias=False),
        L.BatchNormalization(),
        L.LeakyReLU(),
        L.Conv2DTranspose(1, (5, 5), strides=(2, 2), padding="same", use_bias=False, activation="tanh"),
    ], name="tf_dcgan_generator")


def arch_mobilevit(K):
    """keras-team/keras-io ``examples/vision/mobilevit.py`` (``create_mobilevit``): conv blocks with
    swish, MobileNetV2 inverted residuals (Conv-BN-swish, DepthwiseConv-BN-swish, Conv-BN, Add),
    MobileViT blocks (unfold by Reshape, transformer of LayerNormalization + MultiHeadAttention +
    swish MLP, fold back, Concatenate with the input); ``keras.activations.swish`` called on tensors
    (a tf.keras op layer / a Keras 3 op). Added: the example's augmentation (RandomFlip,
    RandomRotation) moved into the model, as Keras tutorials do. Image 32 (was 256), channels / 2,
    one MobileViT block per stage with 1 transformer layer, 5 classes."""
    L = K.layers
    swish = K.activations.swish
    patch = 4  # 2x2 patches

    def conv_block(x, filters, kernel_size=3, strides=2):
        return L.Conv2D(filters, kernel_size, strides=strides, activation=swish, padding="same")(x)

    def inverted_residual(x, expanded, out, strides=1):
        m = L.Conv2D(expanded, 1, padding="same", use_bias=False)(x)
        m = swish(L.BatchNormalization()(m))
        if strides == 2:
            m = L.ZeroPadding2D(padding=((0, 1), (0, 1)))(m)
        m = L.DepthwiseConv2D(3, strides=strides, padding="same" if strides == 1 else "valid", use_bias=False)(m)
        m = swish(L.BatchNormalization()(m))
        m = L.Conv2D(out, 1, padding="same", use_bias=False)(m)
        m = L.BatchNormalization()(m)
        return L.Add()([m, x]) if x.shape[-1] == out and strides == 1 else m

    def transformer(x, dim, num_heads=2):
        x1 = L.LayerNormalization(epsilon=1e-6)(x)
        att = L.MultiHeadAttention(num_heads=num_heads, key_dim=dim, dropout=0.1)(x1, x1)
        x2 = L.Add()([att, x])
        x3 = L.LayerNormalization(epsilon=1e-6)(x2)
        for units in (x.shape[-1] * 2, x.shape[-1]):
            x3 = L.Dropout(0.1)(L.Dense(units, activation=swish)(x3))
        return L.Add()([x3, x2])

    def mobilevit_block(x, dim):
        local = conv_block(x, dim, strides=1)
        local = conv_block(local, dim, kernel_size=1, strides=1)
        n = local.shape[1] * local.shape[2] // patch
        g = transformer(L.Reshape((patch, n, dim))(local), dim)
        folded = L.Reshape((local.shape[1], local.shape[2], dim))(g)
        folded = conv_block(folded, x.shape[-1], kernel_size=1, strides=1)
        return conv_block(L.Concatenate(axis=-1)([x, folded]), dim, strides=1)

    inp = K.Input((32, 32, 3))
    x = L.RandomFlip("horizontal")(inp)
    x = L.RandomRotation(0.1)(x)
    x = L.Rescaling(scale=1.0 / 255)(x)
    x = conv_block(x, 8)
    x = inverted_residual(x, 16, 8)
    x = inverted_residual(x, 16, 12, strides=2)
    x = inverted_residual(x, 24, 12)
    x = mobilevit_block(x, dim=16)
    x = inverted_residual(x, 24, 16, strides=2)
    x = mobilevit_block(x, dim=20)
    x = conv_block(x, 32, kernel_size=1, strides=1)
    x = L.GlobalAvgPool2D()(x)
    return K.Model(inp, L.Dense(5, activation="softmax")(x), name="mobilevit")


def arch_td_convnet_gru(K):
    """metal3d/keras-video-generators' action-recognition example (``build_convnet`` + ``action_model``):
    a Sequential ConvNet (pairs of Conv2D(3x3, same, relu) then ``BatchNormalization(momentum=.9)``,
    MaxPool2D, GlobalMaxPool2D) wrapped whole in ``TimeDistributed(convnet, input_shape=shape)``,
    then GRU(64) and a Dense/Dropout decision stack. Two of the four blocks, filters / 8, 5 frames of 32x32."""
    L = K.layers
    convnet = K.Sequential([K.Input((32, 32, 3))], name="convnet")
    for f in (8, 16):
        convnet.add(L.Conv2D(f, (3, 3), padding="same", activation="relu"))
        convnet.add(L.Conv2D(f, (3, 3), padding="same", activation="relu"))
        convnet.add(L.BatchNormalization(momentum=0.9))
        convnet.add(L.MaxPool2D())
    convnet.add(L.GlobalMaxPool2D())
    return K.Sequential([
        K.Input((5, 32, 32, 3)),
        L.TimeDistributed(convnet),
        L.GRU(16),
        L.Dense(32, activation="relu"), L.Dropout(0.5),
        L.Dense(16, activation="relu"), L.Dropout(0.5),
        L.Dense(2, activation="sigmoid"),
    ], name="action_model")


def arch_td_mobilenet_gru(K):
    """The same repository's transfer-learning variant (``build_mobilenet``): ``keras.applications``
    MobileNet without its top, all but the last 9 layers frozen (``trainable = False``), inside
    ``Sequential([mobilenet, GlobalMaxPool2D()])``, wrapped in TimeDistributed, then GRU(64) and the
    decision stack. MobileNet alpha 0.25 at 32x32 (``weights=None``), GRU(16)."""
    L = K.layers
    base = K.applications.MobileNet(alpha=0.25, include_top=False, input_shape=(32, 32, 3), weights=None)
    for layer in base.layers[:-9]:
        layer.trainable = False
    convnet = K.Sequential([base, L.GlobalMaxPool2D()], name="convnet")
    return K.Sequential([
        K.Input((4, 32, 32, 3)),
        L.TimeDistributed(convnet),
        L.GRU(16),
        L.Dense(32, activation="relu"), L.Dropout(0.5),
        L.Dense(3, activation="softmax"),
    ], name="action_model")


# --------------------------------------------------------------------------- PointNet (keras-io)
_POINTNET_REG: dict = {}
def _orthogonal_regularizer(K):
    key = K.__name__
    if key in _POINTNET_REG:
        return _POINTNET_REG[key]
    if is_tfk(K):
        import tensorflow as tf
        class OrthogonalRegularizer(K.regularizers.Regularizer):
            def __init__(self, num_features, l2reg=0.001):
                self.num_features = num_features
                self.l2reg = l2reg
                self.eye = tf.eye(num_features)
            def __call__(self, x):
                x = tf.reshape(x, (-1, self.num_features, self.num_features))
                xxt = tf.tensordot(x, x, axes=(2, 2))
                xxt = tf.reshape(xxt, (-1, self.num_features, self.num_features))
                return tf.reduce_sum(self.l2reg * tf.square(xxt - self.eye))
            def get_config(self):
                return {"num_features": int(self.num_features), "l2reg": float(self.l2reg)}
    else:
        import keras
        @keras.saving.register_keras_serializable("OrthogonalRegularizer")
        class OrthogonalRegularizer(keras.regularizers.Regularizer):
            def __init__(self, num_features, l2reg=0.001):
                self.num_features = num_features
                self.l2reg = l2reg
                self.identity = keras.ops.eye(num_features)
            def __call__(self, x):
                x = keras.ops.reshape(x, (-1, self.num_features, self.num_features))
                xxt = keras.ops.tensordot(x, x, axes=(2, 2))
                xxt = keras.ops.reshape(xxt, (-1, self.num_features, self.num_features))
                return keras.ops.sum(self.l2reg * keras.ops.square(xxt - self.identity))
            def get_config(self):
                return {"num_features": self.num_features, "l2reg": self.l2reg}
    _POINTNET_REG[key] = OrthogonalRegularizer
    return OrthogonalRegularizer


def arch_pointnet(K, points=64, classes=5):
    """keras-team/keras-io ``examples/vision/pointnet.py``: Conv1D(k=1)/Dense -> BN(momentum=0.0) -> ReLU,
    two T-nets (Dense with an ``OrthogonalRegularizer`` activity regularizer -- a custom object -- and an
    identity bias, Reshape, ``Dot(axes=(2, 1))``); 64 points, filters / 4 to / 16. The T-net kernel is
    drawn small instead of the example's zeros, so that the T-nets' BNs reach the output."""
    import numpy as np

    L = K.layers
    Reg = _orthogonal_regularizer(K)

    def conv_bn(x, f):
        x = L.Conv1D(f, kernel_size=1, padding="valid")(x)
        x = L.BatchNormalization(momentum=0.0)(x)
        return L.Activation("relu")(x)

    def dense_bn(x, f):
        x = L.Dense(f)(x)
        x = L.BatchNormalization(momentum=0.0)(x)
        return L.Activation("relu")(x)

    def tnet(inputs, n):
        bias = K.initializers.Constant(np.eye(n).flatten().tolist() if is_tfk(K) else np.eye(n).flatten())
        x = conv_bn(inputs, 8)
        x = conv_bn(x, 16)
        x = conv_bn(x, 64)
        x = L.GlobalMaxPooling1D()(x)
        x = dense_bn(x, 32)
        x = dense_bn(x, 16)
        # the example's kernel_initializer="zeros" would make the T-net ignore its input until trained
        x = L.Dense(n * n, kernel_initializer=K.initializers.RandomNormal(stddev=0.05), bias_initializer=bias,
                    activity_regularizer=Reg(n))(x)
        feat_t = L.Reshape((n, n))(x)
        return L.Dot(axes=(2, 1))([inputs, feat_t])

    inp = K.Input(shape=(points, 3))
    x = tnet(inp, 3)
    x = conv_bn(x, 8)
    x = conv_bn(x, 8)
    x = tnet(x, 8)
    x = conv_bn(x, 8)
    x = conv_bn(x, 16)
    x = conv_bn(x, 64)
    x = L.GlobalMaxPooling1D()(x)
    x = dense_bn(x, 32)
    x = L.Dropout(0.3)(x)
    x = dense_bn(x, 16)
    x = L.Dropout(0.3)(x)
    out = L.Dense(classes, activation="softmax")(x)
    return K.Model(inputs=inp, outputs=out, name="pointnet")


# --------------------------------------------------------------------------- 3D CT scan classification (keras-io)
def arch_ct3d(K, depth=16, side=32):
    """keras-team/keras-io ``examples/vision/3D_image_classification.py`` (``get_model``): Conv3D(relu) ->
    MaxPool3D -> **BN after the pooling** (nothing to fold into), GlobalAveragePooling3D; 32x32x16 volume,
    filters / 8, three blocks of four."""
    L = K.layers
    inp = K.Input((side, side, depth, 1))
    x = L.Conv3D(filters=8, kernel_size=3, activation="relu")(inp)
    x = L.MaxPool3D(pool_size=2)(x)
    x = L.BatchNormalization()(x)
    x = L.Conv3D(filters=8, kernel_size=3, activation="relu")(x)
    x = L.MaxPool3D(pool_size=2)(x)
    x = L.BatchNormalization()(x)
    x = L.Conv3D(filters=16, kernel_size=3, activation="relu", padding="same")(x)
    x = L.MaxPool3D(pool_size=2)(x)
    x = L.BatchNormalization()(x)
    x = L.GlobalAveragePooling3D()(x)
    x = L.Dense(units=32, activation="relu")(x)
    x = L.Dropout(0.3)(x)
    out = L.Dense(units=1, activation="sigmoid")(x)
    return K.Model(inp, out, name="3dcnn")


# --------------------------------------------------------------------------- DeepLabV3+ (keras-io)
def arch_deeplabv3plus(K, size=64, classes=4):
    """keras-team/keras-io ``examples/vision/deeplabv3_plus.py``: ``convolution_block`` (Conv2D no bias,
    He normal, dilation 1/6/12/18 -> BN -> ReLU; Keras 3: ``ops.nn.relu`` as the example), DSPP with a
    full-size AveragePooling2D and bilinear UpSampling2D, decoder on a conv2 tap. The ResNet50 backbone
    (``keras.applications``) is replaced by a three-block ResNet with the same layer names at 64x64."""
    L = K.layers

    def cblock(x, f=16, k=3, d=1, padding="same", use_bias=False):
        x = L.Conv2D(f, kernel_size=k, dilation_rate=d, padding=padding, use_bias=use_bias,
                     kernel_initializer=K.initializers.HeNormal())(x)
        x = L.BatchNormalization()(x)
        return L.Activation("relu")(x) if is_tfk(K) else K.ops.nn.relu(x)

    def dspp(x):
        dims = x.shape
        y = L.AveragePooling2D(pool_size=(dims[-3], dims[-2]))(x)
        y = cblock(y, k=1, use_bias=True)
        out_pool = L.UpSampling2D(size=(dims[-3] // y.shape[1], dims[-2] // y.shape[2]), interpolation="bilinear")(y)
        o1 = cblock(x, k=1, d=1)
        o6 = cblock(x, k=3, d=6)
        o12 = cblock(x, k=3, d=12)
        o18 = cblock(x, k=3, d=18)
        x = L.Concatenate(axis=-1)([out_pool, o1, o6, o12, o18])
        return cblock(x, k=1)

    # backbone: a small ResNet-style stand-in for keras.applications.ResNet50 (conv2 / conv4 taps)
    def bottleneck(x, f, s, name):
        sc = L.Conv2D(4 * f, 1, strides=s, name=name + "_0_conv")(x)
        sc = L.BatchNormalization(epsilon=1.001e-5, name=name + "_0_bn")(sc)
        y = L.Conv2D(f, 1, strides=s, name=name + "_1_conv")(x)
        y = L.BatchNormalization(epsilon=1.001e-5, name=name + "_1_bn")(y)
        y = L.Activation("relu", name=name + "_1_relu")(y)
        y = L.Conv2D(f, 3, padding="same", name=name + "_2_conv")(y)
        y = L.BatchNormalization(epsilon=1.001e-5, name=name + "_2_bn")(y)
        y = L.Activation("relu", name=name + "_2_relu")(y)
        y = L.Conv2D(4 * f, 1, name=name + "_3_conv")(y)
        y = L.BatchNormalization(epsilon=1.001e-5, name=name + "_3_bn")(y)
        y = L.Add(name=name + "_add")([sc, y])
        return L.Activation("relu", name=name + "_out")(y)

    inp = K.Input(shape=(size, size, 3))
    x = L.ZeroPadding2D(3, name="conv1_pad")(inp)
    x = L.Conv2D(8, 7, strides=2, name="conv1_conv")(x)
    x = L.BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(x)
    x = L.Activation("relu", name="conv1_relu")(x)
    x = L.ZeroPadding2D(1, name="pool1_pad")(x)
    x = L.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    x = bottleneck(x, 4, 1, "conv2_block1")
    low = x
    x = bottleneck(x, 8, 2, "conv3_block1")
    x = bottleneck(x, 8, 2, "conv4_block1")
    x = dspp(x)
    ih = size // 4 // x.shape[1]
    x = L.UpSampling2D(size=(ih, ih), interpolation="bilinear")(x)
    y = cblock(low, f=8, k=1)
    x = L.Concatenate(axis=-1)([x, y])
    x = cblock(x)
    x = cblock(x)
    x = L.UpSampling2D(size=(size // x.shape[1], size // x.shape[2]), interpolation="bilinear")(x)
    out = L.Conv2D(classes, kernel_size=(1, 1), padding="same")(x)
    return K.Model(inputs=inp, outputs=out, name="deeplabv3plus")


# --------------------------------------------------------------------------- ECG ResNet (antonior92/automatic-ecg-diagnosis)
def arch_ecg_resnet(K, samples=256, leads=12, classes=6, postactivation_bn=False):
    """antonior92/automatic-ecg-diagnosis ``model.py`` (``ResidualUnit``, ``get_model``): Conv1D (no bias,
    kernel 16, 'same') -> BN -> ReLU -> Dropout, strided second conv, skip MaxPooling1D + 1x1 Conv1D,
    pre-activation **BN after the Add**; 256 samples x 12 leads, filters / 8."""
    L = K.layers
    ks, init = 16, "he_normal"

    def bn_act(x):
        if postactivation_bn:
            x = L.Activation("relu")(x)
            return L.BatchNormalization(center=False, scale=False)(x)
        x = L.BatchNormalization()(x)
        return L.Activation("relu")(x)

    def unit(x, y, n_out, f_out):
        n_in = y.shape[1]
        down = n_in // n_out
        if down > 1:
            y = L.MaxPooling1D(down, strides=down, padding="same")(y)
        if y.shape[2] != f_out:
            y = L.Conv1D(f_out, 1, padding="same", use_bias=False, kernel_initializer=init)(y)
        x = L.Conv1D(f_out, ks, padding="same", use_bias=False, kernel_initializer=init)(x)
        x = bn_act(x)
        x = L.Dropout(0.2)(x)
        x = L.Conv1D(f_out, ks, strides=down, padding="same", use_bias=False, kernel_initializer=init)(x)
        x = L.Add()([x, y])
        y = x
        x = bn_act(x)
        x = L.Dropout(0.2)(x)
        return x, y

    sig = K.Input(shape=(samples, leads), dtype="float32", name="signal")
    x = L.Conv1D(8, ks, padding="same", use_bias=False, kernel_initializer=init)(sig)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x, y = unit(x, x, samples // 4, 16)
    x, y = unit(x, y, samples // 16, 24)
    x, y = unit(x, y, samples // 64, 32)
    x, _ = unit(x, y, samples // 256, 40)
    x = L.Flatten()(x)
    out = L.Dense(classes, activation="sigmoid", kernel_initializer=init)(x)
    return K.Model(sig, out)



# --------------------------------------------------------------------------- DDIM residual U-Net (keras-io generative/ddim.py)
_DDIM_EMB_DIMS = 8

def sinusoidal_embedding_tf(x):
    import math
    import tensorflow as tf
    frequencies = tf.exp(tf.linspace(tf.math.log(1.0), tf.math.log(1000.0), 8 // 2))
    angular_speeds = 2.0 * math.pi * frequencies
    return tf.concat([tf.sin(angular_speeds * x), tf.cos(angular_speeds * x)], axis=3)

def sinusoidal_embedding_k3(x):
    import math
    import keras
    from keras import ops
    frequencies = ops.exp(ops.linspace(ops.log(1.0), ops.log(1000.0), 8 // 2))
    angular_speeds = ops.cast(2.0 * math.pi * frequencies, "float32")
    return ops.concatenate([ops.sin(angular_speeds * x), ops.cos(angular_speeds * x)], axis=3)


def arch_ddim_unet(K, size=16, widths=(8, 16, 24), block_depth=2):
    """keras-team/keras-io ``examples/generative/ddim.py`` (``get_network``): two inputs (images, noise
    variances), sinusoidal embedding in a **Lambda** (Python code in tf_keras: bytecode), residual blocks
    with **BN(center=False, scale=False) before the conv** (no fold), swish convs, AveragePooling2D,
    bilinear UpSampling2D + skip Concatenates; 16x16, widths / 4. Final conv drawn instead of zeros."""
    L = K.layers

    def residual_block(width):
        def apply(x):
            input_width = x.shape[3]
            if input_width == width:
                residual = x
            else:
                residual = L.Conv2D(width, kernel_size=1)(x)
            x = L.BatchNormalization(center=False, scale=False)(x)
            x = L.Conv2D(width, kernel_size=3, padding="same", activation="swish")(x)
            x = L.Conv2D(width, kernel_size=3, padding="same")(x)
            return L.Add()([x, residual])
        return apply

    def down_block(width):
        def apply(x):
            x, skips = x
            for _ in range(block_depth):
                x = residual_block(width)(x)
                skips.append(x)
            return L.AveragePooling2D(pool_size=2)(x)
        return apply

    def up_block(width):
        def apply(x):
            x, skips = x
            x = L.UpSampling2D(size=2, interpolation="bilinear")(x)
            for _ in range(block_depth):
                x = L.Concatenate()([x, skips.pop()])
                x = residual_block(width)(x)
            return x
        return apply

    noisy_images = K.Input(shape=(size, size, 3))
    noise_variances = K.Input(shape=(1, 1, 1))
    if is_tfk(K):
        e = L.Lambda(sinusoidal_embedding_tf)(noise_variances)
    else:
        e = L.Lambda(sinusoidal_embedding_k3, output_shape=(1, 1, _DDIM_EMB_DIMS))(noise_variances)
    e = L.UpSampling2D(size=size, interpolation="nearest")(e)
    x = L.Conv2D(widths[0], kernel_size=1)(noisy_images)
    x = L.Concatenate()([x, e])
    skips = []
    for width in widths[:-1]:
        x = down_block(width)([x, skips])
    for _ in range(block_depth):
        x = residual_block(widths[-1])(x)
    for width in reversed(widths[:-1]):
        x = up_block(width)([x, skips])
    # the example's kernel_initializer="zeros" (an untrained network outputs 0) left out
    x = L.Conv2D(3, kernel_size=1)(x)
    return K.Model([noisy_images, noise_variances], x, name="residual_unet")


# --------------------------------------------------------------------------- EEGNet (vlawhern/arl-eegmodels EEGModels.py)
def arch_eegnet(K, classes=4, chans=8, samples=64, kern=16, F1=4, D=2, F2=8, cf=False):
    """vlawhern/arl-eegmodels ``EEGModels.py`` (``EEGNet``): Conv2D(1 x kern, no bias) -> BN ->
    **DepthwiseConv2D(depth_multiplier=2**, max_norm constraint) -> BN -> ELU, SeparableConv2D -> BN,
    Dense with max_norm; 8 channels x 64 samples. ``cf``: the 2018 channels_first version, BN(axis=1)."""
    L = K.layers
    mn = K.constraints.max_norm
    if cf:  # the 2018 version: Input(1, Chans, Samples) with image_data_format channels_first, BN(axis=1)
        inp = K.Input(shape=(1, chans, samples))
        df, ax = "channels_first", 1
    else:
        inp = K.Input(shape=(chans, samples, 1))
        df, ax = "channels_last", -1
    b1 = L.Conv2D(F1, (1, kern), padding="same", use_bias=False, data_format=df)(inp)
    b1 = L.BatchNormalization(axis=ax)(b1)
    b1 = L.DepthwiseConv2D((chans, 1), use_bias=False, depth_multiplier=D, depthwise_constraint=mn(1.0),
                           data_format=df)(b1)
    b1 = L.BatchNormalization(axis=ax)(b1)
    b1 = L.Activation("elu")(b1)
    b1 = L.AveragePooling2D((1, 4), data_format=df)(b1)
    b1 = L.Dropout(0.5)(b1)
    b2 = L.SeparableConv2D(F2, (1, 16), use_bias=False, padding="same", data_format=df)(b1)
    b2 = L.BatchNormalization(axis=ax)(b2)
    b2 = L.Activation("elu")(b2)
    b2 = L.AveragePooling2D((1, 8), data_format=df)(b2)
    b2 = L.Dropout(0.5)(b2)
    f = L.Flatten(name="flatten")(b2)
    d = L.Dense(classes, name="dense", kernel_constraint=mn(0.25))(f)
    out = L.Activation("softmax", name="softmax")(d)
    return K.Model(inputs=inp, outputs=out)



# --------------------------------------------------------------------------- EfficientDet BiFPN + heads (xuannianz/EfficientDet)
_WBIFPN: dict = {}
def _wbifpn_add(K):
    if K.__name__ in _WBIFPN:
        return _WBIFPN[K.__name__]
    import tensorflow as tf

    class wBiFPNAdd(K.layers.Layer):
        def __init__(self, epsilon=1e-4, **kwargs):
            super().__init__(**kwargs)
            self.epsilon = epsilon

        def build(self, input_shape):
            num_in = len(input_shape)
            self.w = self.add_weight(name=self.name, shape=(num_in,),
                                     initializer=K.initializers.constant(1 / num_in), trainable=True, dtype=tf.float32)

        def call(self, inputs, **kwargs):
            w = K.activations.relu(self.w)
            x = tf.reduce_sum([w[i] * inputs[i] for i in range(len(inputs))], axis=0)
            return x / (tf.reduce_sum(w) + self.epsilon)

        def compute_output_shape(self, input_shape):
            return input_shape[0]

        def get_config(self):
            config = super().get_config()
            config.update({"epsilon": self.epsilon})
            return config

    _WBIFPN[K.__name__] = wBiFPNAdd
    return wBiFPNAdd


def arch_efficientdet_bifpn(K, width=16, depth=2, anchors=3, classes=2):
    """xuannianz/EfficientDet ``model.py`` (``build_wBiFPN``, ``BoxNet``/``ClassNet``): custom ``wBiFPNAdd``
    weighted fusion, SeparableConv2D -> BN(momentum=0.997, epsilon=1e-4); the heads' separable convs are
    **shared by the five levels with one BN per level** (no fold into a shared conv). The original heads
    are subclassed models and its swish a Python lambda; here functional, ``Activation("swish")``.
    Backbone: a small conv-BN-swish stack in place of EfficientNet; 128x128, width 16."""
    L = K.layers
    W = _wbifpn_add(K)
    MOM, EPS = 0.997, 1e-4

    def sep_block(x, name, strides=1):
        x = L.SeparableConv2D(width, 3, strides=strides, padding="same", use_bias=True, name=f"{name}/conv")(x)
        return L.BatchNormalization(momentum=MOM, epsilon=EPS, name=f"{name}/bn")(x)

    def conv_bn(x, f, s, name):
        x = L.Conv2D(f, 3, strides=s, padding="same", use_bias=False, name=name + "_conv")(x)
        x = L.BatchNormalization(momentum=MOM, epsilon=EPS, name=name + "_bn")(x)
        return L.Activation("swish", name=name + "_act")(x)

    inp = K.Input((128, 128, 3), name="image_input")
    x = conv_bn(inp, 8, 2, "stem")
    C3 = conv_bn(conv_bn(x, 8, 2, "b2"), 16, 2, "b3")
    C4 = conv_bn(C3, 24, 2, "b4")
    C5 = conv_bn(C4, 32, 2, "b5")
    # first BiFPN layer inputs (xuannianz build_wBiFPN, id 0)
    def resample(x, name):
        x = L.Conv2D(width, 1, padding="same", name=f"{name}/conv2d")(x)
        return L.BatchNormalization(momentum=MOM, epsilon=EPS, name=f"{name}/bn")(x)
    P3, P4, P5 = resample(C3, "r3"), resample(C4, "r4"), resample(C5, "r5")
    P6 = L.MaxPooling2D(pool_size=3, strides=2, padding="same")(P5)
    P7 = L.MaxPooling2D(pool_size=3, strides=2, padding="same")(P6)
    P6_td = W(name="fpn/p6_td_add")([P6, L.UpSampling2D()(P7)])
    P6_td = sep_block(L.Activation("swish")(P6_td), "fpn/p6_td")
    P5_td = W(name="fpn/p5_td_add")([P5, L.UpSampling2D()(P6_td)])
    P5_td = sep_block(L.Activation("swish")(P5_td), "fpn/p5_td")
    P4_td = W(name="fpn/p4_td_add")([P4, L.UpSampling2D()(P5_td)])
    P4_td = sep_block(L.Activation("swish")(P4_td), "fpn/p4_td")
    P3_out = W(name="fpn/p3_out_add")([P3, L.UpSampling2D()(P4_td)])
    P3_out = sep_block(L.Activation("swish")(P3_out), "fpn/p3_out")
    P4_out = W(name="fpn/p4_out_add")([P4, P4_td, L.MaxPooling2D(3, 2, padding="same")(P3_out)])
    P4_out = sep_block(L.Activation("swish")(P4_out), "fpn/p4_out")
    P5_out = W(name="fpn/p5_out_add")([P5, P5_td, L.MaxPooling2D(3, 2, padding="same")(P4_out)])
    P5_out = sep_block(L.Activation("swish")(P5_out), "fpn/p5_out")
    P6_out = W(name="fpn/p6_out_add")([P6, P6_td, L.MaxPooling2D(3, 2, padding="same")(P5_out)])
    P6_out = sep_block(L.Activation("swish")(P6_out), "fpn/p6_out")
    P7_out = W(name="fpn/p7_out_add")([P7, L.MaxPooling2D(3, 2, padding="same")(P6_out)])
    P7_out = sep_block(L.Activation("swish")(P7_out), "fpn/p7_out")
    feats = [P3_out, P4_out, P5_out, P6_out, P7_out]

    def net(name, nv):
        # BoxNet / ClassNet: separable convs shared by the five levels, one BN per level and conv
        convs = [L.SeparableConv2D(width, 3, padding="same", bias_initializer="zeros", name=f"{name}/{name}-{i}")
                 for i in range(depth)]
        bns = [[L.BatchNormalization(momentum=MOM, epsilon=EPS, name=f"{name}/{name}-{i}-bn-{j}") for j in range(3, 8)]
               for i in range(depth)]
        head = L.SeparableConv2D(anchors * nv, 3, padding="same", name=f"{name}/{name}-predict")
        reshape = L.Reshape((-1, nv))
        outs = []
        for level, f in enumerate(feats):
            for i in range(depth):
                f = convs[i](f)
                f = bns[i][level](f)
                f = L.Activation("swish")(f)
            outs.append(reshape(head(f)))
        return L.Concatenate(axis=1, name=name + "_out")(outs)

    reg = net("box", 4)
    cls = L.Activation("sigmoid")(net("class", classes))
    return K.Model(inp, [reg, cls], name="efficientdet")


# --------------------------------------------------------------------------- FaceNet Inception-ResNet-v1 (nyoki-mtl/keras-facenet)
def facenet_scaling(x, scale):
    return x * scale


def arch_facenet(K, size=80, div=8):
    """nyoki-mtl/keras-facenet ``inception_resnet_v1.py``: conv2d_bn with BN(momentum=0.995,
    epsilon=0.001, **scale=False**), Block35/17/8 residuals scaled by ``Lambda(scaling, arguments={"scale":
    s})`` (tf_keras stores the function as bytecode), Bottleneck Dense(no bias) -> BN(scale=False);
    80x80, filters / 8, two blocks per stage."""
    L = K.layers
    bn_axis = 3

    def cbn(x, filters, k, strides=1, padding="same", activation="relu", use_bias=False, name=None):
        x = L.Conv2D(filters, k, strides=strides, padding=padding, use_bias=use_bias, name=name)(x)
        if not use_bias:
            x = L.BatchNormalization(axis=bn_axis, momentum=0.995, epsilon=0.001, scale=False,
                                     name=name + "_BatchNorm")(x)
        if activation is not None:
            x = L.Activation(activation, name=name + "_Activation")(x)
        return x

    def block(x, scale, block_type, idx, activation="relu"):
        p = f"{block_type}_{idx}"
        if block_type == "Block35":
            b0 = cbn(x, 32 // div, 1, name=p + "_Branch_0_Conv2d_1x1")
            b1 = cbn(x, 32 // div, 1, name=p + "_Branch_1_Conv2d_0a_1x1")
            b1 = cbn(b1, 32 // div, 3, name=p + "_Branch_1_Conv2d_0b_3x3")
            b2 = cbn(x, 32 // div, 1, name=p + "_Branch_2_Conv2d_0a_1x1")
            b2 = cbn(b2, 32 // div, 3, name=p + "_Branch_2_Conv2d_0b_3x3")
            b2 = cbn(b2, 32 // div, 3, name=p + "_Branch_2_Conv2d_0c_3x3")
            branches = [b0, b1, b2]
        elif block_type == "Block17":
            b0 = cbn(x, 128 // div, 1, name=p + "_Branch_0_Conv2d_1x1")
            b1 = cbn(x, 128 // div, 1, name=p + "_Branch_1_Conv2d_0a_1x1")
            b1 = cbn(b1, 128 // div, [1, 7], name=p + "_Branch_1_Conv2d_0b_1x7")
            b1 = cbn(b1, 128 // div, [7, 1], name=p + "_Branch_1_Conv2d_0c_7x1")
            branches = [b0, b1]
        else:
            b0 = cbn(x, 192 // div, 1, name=p + "_Branch_0_Conv2d_1x1")
            b1 = cbn(x, 192 // div, 1, name=p + "_Branch_1_Conv2d_0a_1x1")
            b1 = cbn(b1, 192 // div, [1, 3], name=p + "_Branch_1_Conv2d_0b_1x3")
            b1 = cbn(b1, 192 // div, [3, 1], name=p + "_Branch_1_Conv2d_0c_3x1")
            branches = [b0, b1]
        mixed = L.Concatenate(axis=bn_axis, name=p + "_Concatenate")(branches)
        up = cbn(mixed, x.shape[bn_axis], 1, activation=None, use_bias=True, name=p + "_Conv2d_1x1")
        up = L.Lambda(facenet_scaling, output_shape=tuple(up.shape[1:]), arguments={"scale": scale},
                      name=p + "_ScaleSum")(up)
        x = L.Add()([x, up])
        if activation is not None:
            x = L.Activation(activation, name=p + "_Activation")(x)
        return x

    inp = K.Input(shape=(size, size, 3))
    x = cbn(inp, 32 // div, 3, strides=2, padding="valid", name="Conv2d_1a_3x3")
    x = cbn(x, 32 // div, 3, padding="valid", name="Conv2d_2a_3x3")
    x = cbn(x, 64 // div, 3, name="Conv2d_2b_3x3")
    x = L.MaxPooling2D(3, strides=2, name="MaxPool_3a_3x3")(x)
    x = cbn(x, 80 // div, 1, padding="valid", name="Conv2d_3b_1x1")
    x = cbn(x, 192 // div, 3, padding="valid", name="Conv2d_4a_3x3")
    x = cbn(x, 256 // div, 3, strides=2, padding="valid", name="Conv2d_4b_3x3")
    for i in range(1, 3):
        x = block(x, 0.17, "Block35", i)
    b0 = cbn(x, 384 // div, 3, strides=2, padding="valid", name="Mixed_6a_Branch_0_Conv2d_1a_3x3")
    b1 = cbn(x, 192 // div, 1, name="Mixed_6a_Branch_1_Conv2d_0a_1x1")
    b1 = cbn(b1, 192 // div, 3, name="Mixed_6a_Branch_1_Conv2d_0b_3x3")
    b1 = cbn(b1, 256 // div, 3, strides=2, padding="valid", name="Mixed_6a_Branch_1_Conv2d_1a_3x3")
    bp = L.MaxPooling2D(3, strides=2, padding="valid", name="Mixed_6a_Branch_2_MaxPool_1a_3x3")(x)
    x = L.Concatenate(axis=bn_axis, name="Mixed_6a")([b0, b1, bp])
    for i in range(1, 3):
        x = block(x, 0.1, "Block17", i)
    b0 = cbn(x, 256 // div, 1, name="Mixed_7a_Branch_0_Conv2d_0a_1x1")
    b0 = cbn(b0, 384 // div, 3, strides=2, padding="valid", name="Mixed_7a_Branch_0_Conv2d_1a_3x3")
    b1 = cbn(x, 256 // div, 1, name="Mixed_7a_Branch_1_Conv2d_0a_1x1")
    b1 = cbn(b1, 256 // div, 3, strides=2, padding="valid", name="Mixed_7a_Branch_1_Conv2d_1a_3x3")
    b2 = cbn(x, 256 // div, 1, name="Mixed_7a_Branch_2_Conv2d_0a_1x1")
    b2 = cbn(b2, 256 // div, 3, name="Mixed_7a_Branch_2_Conv2d_0b_3x3")
    b2 = cbn(b2, 256 // div, 3, strides=2, padding="valid", name="Mixed_7a_Branch_2_Conv2d_1a_3x3")
    bp = L.MaxPooling2D(3, strides=2, padding="valid", name="Mixed_7a_Branch_3_MaxPool_1a_3x3")(x)
    x = L.Concatenate(axis=bn_axis, name="Mixed_7a")([b0, b1, b2, bp])
    x = block(x, 0.2, "Block8", 1)
    x = block(x, 1.0, "Block8", 6, activation=None)
    x = L.GlobalAveragePooling2D(name="AvgPool")(x)
    x = L.Dropout(1.0 - 0.8, name="Dropout")(x)
    x = L.Dense(16, use_bias=False, name="Bottleneck")(x)
    x = L.BatchNormalization(momentum=0.995, epsilon=0.001, scale=False, name="Bottleneck_BatchNorm")(x)
    return K.Model(inp, x, name="inception_resnet_v1")


# --------------------------------------------------------------------------- TCN (philipperemy/keras-tcn)
def tcn_last_step(tt):
    return tt[:, -1, :]


def arch_tcn(K, feats=3, filters=8, kernel=2, dilations=(1, 2, 4, 8), classes=4, lambda_slice=False):
    """philipperemy/keras-tcn ``tcn.py`` (``ResidualBlock``, ``TCN``, ``compiled_tcn``; the 2019 Keras 2.2
    version) with ``use_batch_norm=True``: a 1x1 causal Conv1D, then per dilation a residual block of two
    **causal dilated Conv1D -> BN -> ReLU -> SpatialDropout1D**, a 1x1 Conv1D on the shortcut (all but the
    last block), Add, Activation('linear'); the blocks' inner outputs summed as skip connections, the last
    time step taken (original: ``Lambda(lambda tt: tt[:, -1, :])``; here a slice op, or with ``lambda_slice``
    that Lambda), Dense -> softmax. The original's subclassed ``TCN`` layer is written out functionally;
    open time axis, nb_filters 64 -> 8."""
    L = K.layers
    inp = K.Input(shape=(None, feats), name="tcn_input")
    x = L.Conv1D(filters, 1, padding="causal", kernel_initializer="he_normal", name="main_conv1D")(inp)
    skips = []
    for i, d in enumerate(dilations):
        last = i == len(dilations) - 1
        y = x
        for k in range(2):
            y = L.Conv1D(filters, kernel, dilation_rate=d, padding="causal", kernel_initializer="he_normal",
                         name=f"residual_block_{i}_conv1D_{k}")(y)
            y = L.BatchNormalization(name=f"residual_block_{i}_bn_{k}")(y)
            y = L.Activation("relu")(y)
            y = L.SpatialDropout1D(rate=0.05)(y)
        short = x if last else L.Conv1D(filters, 1, padding="same", kernel_initializer="he_normal",
                                        name=f"residual_block_{i}_conv1D_2")(x)
        x = L.Activation("linear")(L.add([short, y]))
        skips.append(y)
    x = L.add(skips)
    if lambda_slice:
        x = L.Lambda(tcn_last_step, name="last_step")(x)
    else:
        x = x[:, -1, :]
    x = L.Dense(classes)(x)
    out = L.Activation("softmax")(x)
    return K.Model(inp, out, name="tcn")


# --------------------------------------------------------------------------- Wide & Deep / Deep & Cross (keras-io structured_data)
_DC_NUMERIC = ("elevation", "slope", "hillshade")
_DC_CATEG = {"soil_type": 16, "wilderness_area": 10, "cover_hint": 25}


def arch_deep_cross(K, hidden_units=(8, 8), dropout_rate=0.1, classes=7, wide=False):
    """keras-team/keras-io ``examples/structured_data/wide_deep_cross_networks.py``
    (``create_deep_and_cross_model``; ``wide``: ``create_wide_and_deep_model``): scalar-shaped inputs
    (``shape=()``), numeric ones expanded to (batch, 1), categorical ones as vocabulary indices (the
    example's StringLookup left out: inputs are the looked-up int indices) into ``Embedding(V, sqrt(V))``;
    cross layers ``x0 * Dense(x) + cross`` (raw ops) then **BN on the cross output**; deep part
    **Dense -> BN -> ReLU -> Dropout**; ``wide``: one-hot encodings (``one_hot`` op for the example's
    StringLookup(output_mode="binary")) and numeric values concatenated and **BN on the raw inputs**, merged
    with the deep part before the softmax Dense. Inputs a list (the example: a dict); units 32 -> 8."""
    L = K.layers
    o = ops(K)
    if is_tfk(K):
        import tensorflow as tf

        one_hot = tf.one_hot
    else:
        one_hot = K.ops.one_hot
    inputs = [K.Input(shape=(), dtype="float32", name=n) for n in _DC_NUMERIC]
    inputs += [K.Input(shape=(), dtype="int32", name=n) for n in _DC_CATEG]
    numeric = [o.expand_dims(i, -1) for i in inputs[:len(_DC_NUMERIC)]]

    def encode(use_embedding):
        feats = list(numeric)
        for inp, (name, v) in zip(inputs[len(_DC_NUMERIC):], _DC_CATEG.items()):
            if use_embedding:
                feats.append(L.Embedding(input_dim=v, output_dim=int(v ** 0.5), name=f"{name}_emb")(inp))
            else:
                feats.append(one_hot(inp, v))
        return L.concatenate(feats)

    x0 = encode(True)
    deep = x0
    for units in hidden_units:
        deep = L.Dense(units)(deep)
        deep = L.BatchNormalization()(deep)
        deep = L.ReLU()(deep)
        deep = L.Dropout(dropout_rate)(deep)
    if wide:
        other = L.BatchNormalization(name="wide_bn")(encode(False))
    else:
        cross = x0
        for _ in hidden_units:
            x = L.Dense(cross.shape[-1])(cross)
            cross = x0 * x + cross
        other = L.BatchNormalization(name="cross_bn")(cross)
    merged = L.concatenate([other, deep])
    out = L.Dense(units=classes, activation="softmax")(merged)
    return K.Model(inputs=inputs, outputs=out, name="wide_deep" if wide else "deep_cross")


# --------------------------------------------------------------------------- TabNet (titu1994/tf-TabNet)
def _sparsemax_tf(z):
    """tensorflow-addons' sparsemax written with raw ops (recorded as TFOpLambda layers)."""
    import tensorflow as tf

    z_sorted = tf.sort(z, axis=-1, direction="DESCENDING")
    k = tf.math.cumsum(tf.ones_like(z), axis=-1)
    z_cumsum = tf.math.cumsum(z_sorted, axis=-1)
    support = tf.cast(tf.math.greater(1.0 + k * z_sorted, z_cumsum), "float32")
    k_z = tf.math.reduce_sum(support, axis=-1, keepdims=True)
    tau = (tf.math.reduce_sum(support * z_sorted, axis=-1, keepdims=True) - 1.0) / k_z
    return tf.math.maximum(z - tau, 0.0)


def arch_tabnet(K, num_features=10, feature_dim=8, output_dim=4, steps=3, classes=3, relaxation=1.5,
                momentum=0.98):
    """titu1994/tf-TabNet ``tabnet/tabnet.py`` (``TransformBlock``, ``TabNet``, ``TabNetClassifier``) with
    ``norm_type='batch'``: **BN on the raw input features** (``input_bn``), transform blocks Dense(no bias)
    -> BN(momentum=0.98) -> GLU (``x[:, :n] * sigmoid(x[:, n:])``, raw ops), the first two blocks **shared by
    every decision step (one Dense and one BN called at three places)**, residual ``(glu + prev) *
    sqrt(0.5)``, attentive transformer Dense -> BN -> prior multiply -> sparsemax (tf_keras: raw-op
    sparsemax; Keras 3: its ``sparsemax`` activation), relaxation update, masked features; decision
    outputs ReLU'd and summed; Dense(no bias) -> softmax. The original's subclassed models written out
    functionally; ``virtual_batch_size=None`` (tf_keras cannot reload a ghost-BN file); 3 steps, feature_dim 8 (N_a + N_d
    as in the paper: with feature_dim == output_dim, the library's default 64/64, the attentive transformer's
    input ``t4[:, output_dim:]`` is empty), output_dim 4."""
    L = K.layers
    tfk = is_tfk(K)
    if tfk:
        import tensorflow as tf

        sigmoid, relu, sparsemax = tf.math.sigmoid, tf.nn.relu, _sparsemax_tf
    else:
        sigmoid, relu = K.ops.sigmoid, K.ops.relu
        sparsemax = L.Activation("sparsemax")

    def block(units, name):
        return (L.Dense(units, use_bias=False, name=f"transformblock_dense_{name}"),
                L.BatchNormalization(axis=-1, momentum=momentum, name=f"transformblock_bn_{name}"))

    def apply(b, x):
        return b[1](b[0](x))

    def glu(x, n):
        return x[:, :n] * sigmoid(x[:, n:])

    f1, f2 = block(2 * feature_dim, "f1"), block(2 * feature_dim, "f2")
    f3 = [block(2 * feature_dim, f"f3_{i}") for i in range(steps)]
    f4 = [block(2 * feature_dim, f"f4_{i}") for i in range(steps)]
    coef = [block(num_features, f"coef_{i}") for i in range(steps - 1)]
    inp = K.Input(shape=(num_features,), name="features")
    features = L.BatchNormalization(axis=-1, momentum=momentum, name="input_bn")(inp)
    masked, complementary, agg = features, None, None
    half = 0.5 ** 0.5
    for ni in range(steps):
        t1 = glu(apply(f1, masked), feature_dim)
        t2 = (glu(apply(f2, t1), feature_dim) + t1) * half
        t3 = (glu(apply(f3[ni], t2), feature_dim) + t2) * half
        t4 = (glu(apply(f4[ni], t3), feature_dim) + t3) * half
        if ni > 0:
            d = relu(t4[:, :output_dim])
            agg = d if agg is None else agg + d
        if ni < steps - 1:
            mask = apply(coef[ni], t4[:, output_dim:])
            if complementary is not None:
                mask = mask * complementary
            mask = sparsemax(mask)
            complementary = (relaxation - mask) if complementary is None else complementary * (relaxation - mask)
            masked = mask * features
    x = L.Dense(classes, use_bias=False, name="classifier")(agg)
    out = L.Activation("softmax")(x)
    return K.Model(inp, out, name="tabnet_classifier")


# --------------------------------------------------------------------------- CBAM ResNet v1 (kobiso/CBAM-keras)
def arch_cbam_resnet(K, depth=8, classes=10, ratio=8):
    """kobiso/CBAM-keras ``models/resnet_v1.py`` (the Keras ``cifar10_resnet.py`` ResNet v1: Conv2D(He
    normal, L2 1e-4) -> BN -> ReLU) with ``attention_module='cbam_block'`` (``models/attention_module.py``):
    after each block's second Conv -> BN, **channel attention: GAP and GMP of the BN output through two
    Dense layers shared by both paths**, Add, sigmoid, Multiply; spatial attention: channel mean and max
    (original: ``Lambda(K.mean / K.max)``; here raw ops) -> Concatenate -> Conv2D(1, 7, sigmoid, no bias) ->
    Multiply; projection shortcut (1x1 conv, no BN), Add, ReLU; AveragePooling2D(8) -> Flatten -> softmax.
    ResNet-8 (one block per stage) at 32x32 (CIFAR)."""
    L = K.layers
    if is_tfk(K):
        import tensorflow as tf

        cmean = lambda t: tf.reduce_mean(t, axis=3, keepdims=True)  # noqa: E731
        cmax = lambda t: tf.reduce_max(t, axis=3, keepdims=True)  # noqa: E731
    else:
        cmean = lambda t: K.ops.mean(t, axis=3, keepdims=True)  # noqa: E731
        cmax = lambda t: K.ops.max(t, axis=3, keepdims=True)  # noqa: E731

    def resnet_layer(x, num_filters=16, kernel_size=3, strides=1, activation="relu", bn=True):
        x = L.Conv2D(num_filters, kernel_size=kernel_size, strides=strides, padding="same",
                     kernel_initializer="he_normal", kernel_regularizer=l2(K, 1e-4))(x)
        if bn:
            x = L.BatchNormalization()(x)
        if activation is not None:
            x = L.Activation(activation)(x)
        return x

    def channel_attention(f):
        ch = f.shape[-1]
        one = L.Dense(ch // ratio, activation="relu", kernel_initializer="he_normal", bias_initializer="zeros")
        two = L.Dense(ch, kernel_initializer="he_normal", bias_initializer="zeros")
        avg = two(one(L.Reshape((1, 1, ch))(L.GlobalAveragePooling2D()(f))))
        mx = two(one(L.Reshape((1, 1, ch))(L.GlobalMaxPooling2D()(f))))
        att = L.Activation("sigmoid")(L.Add()([avg, mx]))
        return L.multiply([f, att])

    def spatial_attention(f):
        concat = L.Concatenate(axis=3)([cmean(f), cmax(f)])
        att = L.Conv2D(1, 7, strides=1, padding="same", activation="sigmoid", kernel_initializer="he_normal",
                       use_bias=False)(concat)
        return L.multiply([f, att])

    num_filters = 16
    n = (depth - 2) // 6
    inp = K.Input(shape=(32, 32, 3))
    x = resnet_layer(inp)
    for stack in range(3):
        for res_block in range(n):
            strides = 2 if stack > 0 and res_block == 0 else 1
            y = resnet_layer(x, num_filters, strides=strides)
            y = resnet_layer(y, num_filters, activation=None)
            if stack > 0 and res_block == 0:
                x = resnet_layer(x, num_filters, kernel_size=1, strides=strides, activation=None, bn=False)
            y = spatial_attention(channel_attention(y))
            x = L.add([x, y])
            x = L.Activation("relu")(x)
        num_filters *= 2
    x = L.AveragePooling2D(pool_size=8)(x)
    y = L.Flatten()(x)
    out = L.Dense(classes, activation="softmax", kernel_initializer="he_normal")(y)
    return K.Model(inp, out, name="cbam_resnet_v1")


# --------------------------------------------------------------------------- HRNetV2 segmentation (noelcodella/HRNet-keras-semantic-segmentation)
def arch_hrnet(K, size=64, classes=1, div=16, noise=0.025):
    """noelcodella/HRNet-keras-semantic-segmentation ``model/seg_hrnet.py`` (fork of
    niecongchong/HRNet-keras-semantic-segmentation that adds **GaussianNoise(0.025) between each BN and
    its ReLU**): stem, bottleneck blocks, transitions to 2/3/4 branches of basic blocks, fuse layers
    **1x1 Conv -> BN -> UpSampling2D (x2/x4/x8) -> add** and strided 3x3 Conv -> BN (-> ReLU -> Conv -> BN)
    down paths, final concatenate -> UpSampling2D -> Conv(no bias) -> **BN -> sigmoid**; 64x64, filters / 16
    (at / 8 the randomized model's logits sit near +-90: a saturated, BN-insensitive sigmoid),
    one bottleneck pair and one basic block per branch (original: four)."""
    L = K.layers
    GN = lambda x: L.GaussianNoise(noise)(x)  # noqa: E731
    f = lambda n: max(1, n // div)  # noqa: E731

    def conv(x, n, k, s=1):
        return L.Conv2D(f(n), k, strides=s, padding="same", use_bias=False, kernel_initializer="he_normal")(x)

    def bn(x):
        return L.BatchNormalization(axis=3)(x)

    def basic(x, n):
        y = L.Activation("relu")(GN(bn(conv(x, n, 3))))
        y = GN(bn(conv(y, n, 3)))
        return L.Activation("relu")(L.add([y, x]))

    def bottleneck(x, n, shortcut):
        y = L.Activation("relu")(GN(bn(conv(x, n // 4, 1))))
        y = L.Activation("relu")(GN(bn(conv(y, n // 4, 3))))
        y = GN(bn(conv(y, n, 1)))
        r = bn(conv(x, n, 1)) if shortcut else x
        return L.Activation("relu")(L.add([y, r]))

    def cbr(x, n, s=1):
        return L.Activation("relu")(bn(conv(x, n, 3, s)))

    def up(x, n, s):
        return L.UpSampling2D(size=(s, s))(bn(conv(x, n, 1)))

    inp = K.Input(shape=(size, size, 3))
    x = L.Activation("relu")(GN(bn(conv(inp, 64, 3, 2))))
    x = bottleneck(x, 256, True)
    x = bottleneck(x, 256, False)
    # stage 2
    x0, x1 = cbr(x, 32), cbr(x, 64, 2)
    x0, x1 = basic(x0, 32), basic(x1, 64)
    x0, x1 = L.add([x0, up(x1, 32, 2)]), L.add([bn(conv(x0, 64, 3, 2)), x1])
    # stage 3
    x0, x1, x2 = cbr(x0, 32), cbr(x1, 64), cbr(x1, 128, 2)
    x0, x1, x2 = basic(x0, 32), basic(x1, 64), basic(x2, 128)
    y0 = L.add([x0, up(x1, 32, 2), up(x2, 32, 4)])
    y1 = L.add([bn(conv(x0, 64, 3, 2)), x1, up(x2, 64, 2)])
    d = bn(conv(L.Activation("relu")(bn(conv(x0, 32, 3, 2))), 128, 3, 2))
    y2 = L.add([d, bn(conv(x1, 128, 3, 2)), x2])
    # stage 4
    x0, x1, x2, x3 = cbr(y0, 32), cbr(y1, 64), cbr(y2, 128), cbr(y2, 256, 2)
    x0, x1, x2, x3 = basic(x0, 32), basic(x1, 64), basic(x2, 128), basic(x3, 256)
    x = L.concatenate([x0, up(x1, 32, 2), up(x2, 32, 4), up(x3, 32, 8)], axis=-1)
    # final layer
    x = L.UpSampling2D(size=(2, 2))(x)
    x = L.Conv2D(classes, 1, use_bias=False, kernel_initializer="he_normal")(x)
    x = L.BatchNormalization(axis=3)(x)
    out = L.Activation("sigmoid", name="Classification")(x)
    return K.Model(inp, out, name="seg_hrnet")


# --------------------------------------------------------------------------- Attention RNN keyword spotting (douglas125/SpeechCmdRecognition)
def arch_attrnn_kws(K, frames=32, mels=16, units=8, classes=12):
    """douglas125/SpeechCmdRecognition ``SpeechModels.py`` (``AttRNNSpeechModel``, the tf.keras 2 version):
    mel spectrogram -> ``tf.expand_dims(x, -1)`` -> Conv2D(10, (5, 1), relu) -> BN -> **Conv2D(1, (5, 1), relu)
    -> BN on a single channel** -> squeeze (original: ``Lambda(K.squeeze)``; here a raw op) -> two
    Bidirectional(LSTM(return_sequences)) -> last step -> Dense query, dot-product attention
    (``Dot(axes=[1, 2])`` -> Softmax -> ``Dot(axes=[1, 1])``) -> Dense stack -> softmax. The frozen nested
    mel-spectrogram front-end (tf signal ops) left out: the input is the spectrogram; 125 x 80 -> 32 x 16,
    LSTM 64 -> 8."""
    L = K.layers
    if is_tfk(K):
        import tensorflow as tf

        expand, squeeze = (lambda t: tf.expand_dims(t, axis=-1, name="mel_stft")), (lambda t: tf.squeeze(t, -1))
    else:
        expand, squeeze = (lambda t: K.ops.expand_dims(t, -1)), (lambda t: K.ops.squeeze(t, -1))
    inp = K.Input((frames, mels), name="melspec")
    x = expand(inp)
    x = L.Conv2D(10, (5, 1), activation="relu", padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.Conv2D(1, (5, 1), activation="relu", padding="same")(x)
    x = L.BatchNormalization()(x)
    x = squeeze(x)
    x = L.Bidirectional(L.LSTM(units, return_sequences=True))(x)
    x = L.Bidirectional(L.LSTM(units, return_sequences=True))(x)
    first = x[:, -1]
    query = L.Dense(2 * units)(first)
    scores = L.Dot(axes=[1, 2])([query, x])
    scores = L.Softmax(name="attSoftmax")(scores)
    att = L.Dot(axes=[1, 1])([scores, x])
    x = L.Dense(2 * units, activation="relu")(att)
    x = L.Dense(units)(x)
    out = L.Dense(classes, activation="softmax", name="output")(x)
    return K.Model(inputs=[inp], outputs=[out], name="attrnn")


# --------------------------------------------------------------------------- LSTM DenseNet with BN(axis=[1, 2]) (dkamianskii/trading)
def arch_lstm_densenet(K, steps=16, feats=5, size=8, blocks=3, dropout=0.1, out_size=2):
    """dkamianskii/trading ``neural_networks/lstm/lstm_model.py`` (``dense_net_static``) and
    ``default_blocks.py`` (``create_lstm_block``, ``create_dense_block``), Keras 3, ``normalization="batch"``:
    **BatchNormalization(axis=[1, 2]) on the raw (time, feature) input and after every sequence LSTM** (one
    gamma/beta/mean/variance per time step and feature), dense connectivity (each block's input is the
    concatenation of all earlier outputs) with Dropout, final LSTM -> **BN()** -> Dropout, dense block Dense
    (L1L2) -> BN -> mish -> Dense; 16 steps x 5 features, size 8, three blocks. The source imports Keras 3,
    whose BatchNormalization takes a single int axis (``BatchNormalization(axis=[1, 2])`` raises there): a
    model with this normalization only builds in tf.keras 2.x / tf_keras, so it is registered for tf_keras only."""
    L = K.layers
    reg = lambda: K.regularizers.L1L2(1e-4, 1e-4)  # noqa: E731
    inp = K.Input((steps, feats))
    x = L.BatchNormalization(axis=[1, 2])(inp)
    outs = [x]
    for _ in range(blocks - 1):
        x = L.LSTM(size, kernel_initializer="glorot_uniform", kernel_regularizer=reg(), return_sequences=True)(x)
        x = L.BatchNormalization(axis=[1, 2])(x)
        outs.append(x)
        x = L.concatenate(outs)
        x = L.Dropout(rate=dropout)(x)
    x = L.LSTM(size, kernel_initializer="glorot_uniform", kernel_regularizer=reg(), return_sequences=False)(x)
    x = L.BatchNormalization()(x)
    x = L.Dropout(rate=dropout)(x)
    x = L.Dense(size, kernel_initializer="glorot_uniform", kernel_regularizer=reg())(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("mish")(x)
    out = L.Dense(out_size)(x)
    return K.Model(inp, out, name="lstm_DenseNet")
