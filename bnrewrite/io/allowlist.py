"""What a model file may name: the explicit allowlist of layer classes, nested objects,
functions and TensorFlow ops that bnrewrite rebuilds without running code from the file.

Pure data (no framework import), so ``inspect`` can check a file without TensorFlow.
Everything here is a pure tensor operation: no file system, network, or code
loading. Anything else is refused by name (exit 2) unless the user supplies it with
``--custom-objects`` or, for ``Lambda`` bytecode, ``--unsafe``.
"""

from __future__ import annotations

#: Keras layer classes (both frameworks; aliases included) that are pure tensor operations.
LAYERS = frozenset("""
InputLayer Dense EinsumDense Activation Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D
GaussianNoise GaussianDropout AlphaDropout ActivityRegularization Flatten Reshape Permute RepeatVector
Masking Embedding Identity Lambda
Conv1D Conv2D Conv3D Convolution1D Convolution2D Convolution3D Conv1DTranspose Conv2DTranspose
Conv3DTranspose Convolution2DTranspose Convolution3DTranspose Deconvolution2D Deconvolution3D
SeparableConv1D SeparableConv2D SeparableConvolution1D SeparableConvolution2D DepthwiseConv1D
DepthwiseConv2D LocallyConnected1D LocallyConnected2D Cropping1D Cropping2D Cropping3D ZeroPadding1D ZeroPadding2D ZeroPadding3D
UpSampling1D UpSampling2D UpSampling3D MaxPooling1D MaxPooling2D MaxPooling3D MaxPool1D MaxPool2D
MaxPool3D AveragePooling1D AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D AvgPool3D
GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D GlobalAvgPool1D GlobalAvgPool2D
GlobalAvgPool3D GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D GlobalMaxPool1D
GlobalMaxPool2D GlobalMaxPool3D
LSTM GRU SimpleRNN RNN LSTMCell GRUCell SimpleRNNCell StackedRNNCells ConvLSTM1D ConvLSTM2D ConvLSTM3D
CuDNNLSTM CuDNNGRU LSTMV1 GRUV1
Bidirectional TimeDistributed
BatchNormalization SyncBatchNormalization BatchNormalizationV1 BatchNormalizationV2 LayerNormalization GroupNormalization UnitNormalization
Normalization Rescaling Resizing CenterCrop Discretization
RandomFlip RandomRotation RandomZoom RandomTranslation RandomContrast RandomBrightness RandomCrop
RandomHeight RandomWidth
RandomErasing RandomPosterization RandomShear RandomElasticTransform RandomSaturation RandomHue
RandomSharpness RandomColorDegeneration RandomGaussianBlur RandomInvert RandomPerspective RandomGrayscale
RandomColorJitter AugMix CutMix MixUp RandAugment Solarization AutoContrast Equalization
AdaptiveAveragePooling1D AdaptiveAveragePooling2D AdaptiveAveragePooling3D AdaptiveMaxPooling1D
AdaptiveMaxPooling2D AdaptiveMaxPooling3D RMSNormalization
Add Subtract Multiply Average Maximum Minimum Concatenate Dot
ReLU LeakyReLU PReLU ELU ThresholdedReLU Softmax
Attention AdditiveAttention MultiHeadAttention
TFOpLambda SlicingOpLambda
""".split())

#: Layer classes that ``keras.applications`` define for their own models: Keras's code, pure tensor
#: operations. Name in the file -> (module that defines it, class there): bnrewrite imports that module
#: itself; a Keras 3 file must name the same module (the same name from elsewhere is another class).
APP_LAYERS = {
    "CustomScaleLayer": ("keras.src.applications.inception_resnet_v2", "CustomScaleLayer"),  # x + r * scale
    "LayerScale": ("keras.src.applications.convnext", "LayerScale"),  # x * gamma, per channel
    "StochasticDepth": ("keras.src.applications.convnext", "StochasticDepth"),  # the identity at inference
    # tf_keras registers its InceptionResNetV2 layer under the package "Custom"; .h5 names no module
    "Custom>CustomScaleLayer": ("tf_keras.src.applications.inception_resnet_v2", "CustomScaleLayer"),
}


def app_layer(class_name: str, module: str | None) -> tuple[str, str] | None:
    """``(module, class)`` of the :data:`APP_LAYERS` entry ``class_name`` from ``module`` names, or None."""
    entry = APP_LAYERS.get(class_name)
    if entry is not None and (module == entry[0] or module is None and entry[0].startswith("tf_keras.")):
        return entry  # Keras 3 files name the module; tf_keras's .h5 names none
    return None


#: Layers that read files, load code or models, or reach the network: refused with the reason.
REFUSED = {
    "TFSMLayer": "loads and runs a TensorFlow SavedModel from disk",
    "ClassMethod": "calls a method of a TensorFlow class named in the file",
    "TextVectorization": "a text vocabulary layer (string tables; may read a vocabulary file)",
    "StringLookup": "a string vocabulary layer (may read a vocabulary file)",
    "IntegerLookup": "a vocabulary layer (may read a vocabulary file)",
    "Hashing": "string hashing (not a numeric tensor operation)",
    "KerasLayer": "a TensorFlow Hub layer (loads a model from a path or URL)",
    "TensorFlowOpLayer": "a raw TensorFlow op tf.keras 2.0-2.3 recorded as a NodeDef, which may name any op, "
                         "file reads included; re-saved with TensorFlow >= 2.4 the same op is a TFOpLambda "
                         "tf.* call, which bnrewrite reads",
}

#: Nested objects a layer config may hold (initializers, regularizers, constraints, dtype
#: policies, RNN cells, Keras 3 serialization helpers).
NESTED = frozenset("""
Zeros Ones Constant RandomNormal RandomUniform TruncatedNormal VarianceScaling Orthogonal Identity
OrthogonalInitializer
GlorotUniform GlorotNormal HeNormal HeUniform LecunNormal LecunUniform IdentityInitializer
ZerosV2 OnesV2 ConstantV2 RandomNormalV2 RandomUniformV2 TruncatedNormalV2 VarianceScalingV2
OrthogonalV2 GlorotUniformV2 GlorotNormalV2 HeNormalV2 HeUniformV2 LecunNormalV2 LecunUniformV2
L1 L2 L1L2 OrthogonalRegularizer
MaxNorm NonNeg UnitNorm MinMaxNorm RadialConstraint
Policy DTypePolicy FloatDTypePolicy PolicyV1 QuantizedDTypePolicy QuantizedFloat8DTypePolicy
Int8QuantizationConfig Int4QuantizationConfig Float8QuantizationConfig AbsMaxQuantizer
LSTMCell GRUCell SimpleRNNCell StackedRNNCells PeepholeLSTMCell
__tuple__ __numpy__ __bytes__ __ellipsis__ __slice__ __typespec__ TensorShape
""".split())

#: Functions a config may name (activations, and Keras ops a Lambda may call by name).
FUNCTIONS = frozenset("""
linear relu relu6 sigmoid softmax log_softmax tanh elu selu softplus softsign swish silu gelu
hard_sigmoid hard_silu hard_swish exponential leaky_relu mish sparse_plus squareplus tanh_shrink
soft_shrink hard_shrink hard_tanh celu glu sparsemax threshold
abs absolute add subtract multiply divide true_divide negative square sqrt rsqrt exp log log1p
power maximum minimum mean sum max min clip transpose reshape expand_dims squeeze concatenate stack
matmul einsum cast sign erf floor ceil round cumsum argmax argmin normalize l2_normalize
""".split())

#: TensorFlow functions a tf.keras ``TFOpLambda`` may call (names as tf.keras saves them,
#: without ``compat.v1.``/``compat.v2.``): pure tensor math only.
TF_OPS = frozenset("""
__operators__.add __operators__.getitem __operators__.ne __operators__.eq
math.add math.add_n math.subtract math.multiply math.divide math.truediv math.floordiv math.floormod
math.negative math.reciprocal math.square math.sqrt math.rsqrt math.exp math.log math.log1p
math.abs math.pow math.maximum math.minimum math.sigmoid math.tanh math.softplus math.erf
math.sign math.round math.floor math.ceil math.reduce_mean math.reduce_sum math.reduce_max
math.reduce_min math.reduce_prod math.reduce_logsumexp math.reduce_std math.reduce_variance
math.l2_normalize math.argmax math.argmin math.cumsum math.squared_difference math.greater
math.less math.equal math.logical_and math.logical_or math.logical_not math.scalar_mul
math.multiply_no_nan math.divide_no_nan math.softmax math.log_softmax math.sin math.cos
math.not_equal math.greater_equal math.less_equal math.reduce_any math.reduce_all math.count_nonzero
nn.relu nn.relu6 nn.leaky_relu nn.elu nn.selu nn.gelu nn.silu nn.swish nn.sigmoid nn.tanh
nn.softmax nn.log_softmax nn.bias_add nn.l2_normalize nn.depth_to_space nn.space_to_depth
nn.avg_pool nn.avg_pool1d nn.avg_pool2d nn.max_pool nn.max_pool1d nn.max_pool2d nn.moments
nn.softplus nn.conv2d_transpose nn.batch_normalization
concat stack unstack reshape transpose expand_dims squeeze split tile pad cast clip_by_value
identity shape gather gather_nd where zeros_like ones_like broadcast_to fill reverse repeat
einsum linalg.matmul matmul linalg.norm norm linalg.l2_normalize image.resize image.resize_with_pad
image.crop_to_bounding_box image.resize_bilinear image.resize_nearest_neighbor
math.argsort sort one_hot range slice strided_slice boolean_mask sequence_mask
reduce_mean reduce_sum reduce_max reduce_min
""".split())


def tf_op_allowed(function: str) -> bool:
    for prefix in ("compat.v1.", "compat.v2."):
        if function.startswith(prefix):
            function = function[len(prefix):]
    return function in TF_OPS
