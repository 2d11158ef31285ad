"""Real-model regression set: small ports of public Keras architectures, and real model files.

``CASES`` lists every case: one architecture (``archs.py``) written by one
framework in one dialect. ``build(case, folder)`` writes the file (seeded, with
randomized BatchNormalization statistics) and returns its path;
``ensure_built`` does the same through a cache keyed by the source of this
package. Real files written by their authors' Keras (``realfiles.py``, ``fixtures/real/``) are
cases too (``<name>-real``, tag ``real_file``): building one copies it, after its sha256 check. ``reference(case, path, xs)`` is the independent reference: the
writing framework's own ``load_model`` called with ``training=False``, eagerly -- and in graph
mode, kept as an alternative where the framework's two modes disagree (see :func:`call` and
``common.parity``).

    from tests.realmodels import CASES, ensure_built, reference, inputs_for
    case = CASES_BY_NAME["yolov3_tiny-tk"]
    path = ensure_built(case, folder)

Nothing here runs bnrewrite; ``run.py`` and ``tests/test_realmodels.py`` do.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import common, realfiles

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"

# --------------------------------------------------------------------------- provenance

KERAS_APPS = dict(repo="keras-team/keras (Keras 3) and keras-team/tf-keras (tf_keras)",
                  file="keras/src/applications/{m}.py; tf_keras/src/applications/{m}.py",
                  licence="Apache-2.0")
TF2ONNX = "onnx/tensorflow-onnx tests/keras2onnx_applications/nightly_build/{t} (Apache-2.0)"

PROV = {
    "yolov3_tiny": dict(repo="qqwweee/keras-yolo3", file="yolo3/model.py (tiny_yolo_body, DarknetConv2D_BN_Leaky)",
                        licence="MIT", via=TF2ONNX.format(t="test_yolov3.py")),
    "yolov3": dict(repo="qqwweee/keras-yolo3", file="yolo3/model.py (darknet_body, resblock_body, yolo_body)",
                   licence="MIT", via=TF2ONNX.format(t="test_yolov3.py")),
    "mask_rcnn_fpn": dict(repo="matterport/Mask_RCNN",
                          file="mrcnn/model.py (BatchNorm, resnet_graph, FPN in MaskRCNN.build, build_rpn_model)",
                          licence="MIT", via=TF2ONNX.format(t="test_mask_rcnn.py")),
    "unet": dict(repo="divamgupta/image-segmentation-keras",
                 file="keras_segmentation/models/unet.py, basic_models.py (vanilla_encoder)", licence="MIT",
                 via=TF2ONNX.format(t="test_unet.py")),
    "segnet": dict(repo="divamgupta/image-segmentation-keras", file="keras_segmentation/models/segnet.py",
                   licence="MIT", via=TF2ONNX.format(t="test_segnet.py")),
    "pspnet": dict(repo="divamgupta/image-segmentation-keras",
                   file="keras_segmentation/models/pspnet.py, model_utils.py (resize_image)", licence="MIT",
                   via=TF2ONNX.format(t="test_pspnet.py")),
    "unet_plus_plus": dict(repo="MrGiovanni/UNetPlusPlus", file="keras/segmentation_models/xnet (xnet, blocks)",
                           licence="ASU non-commercial research licence (architecture only, re-written from the "
                                   "UNet++ paper, Zhou et al. 2018; no code used)",
                           via=TF2ONNX.format(t="test_unet_plus_plus.py")),
    "resnext": dict(repo="titu1994/Keras-ResNeXt", file="resnext.py", licence="MIT",
                    via=TF2ONNX.format(t="test_resnext.py")),
    "resnext_lambda": dict(repo="titu1994/Keras-ResNeXt", file="resnext.py (Lambda channel slices)", licence="MIT",
                           via=TF2ONNX.format(t="test_resnext.py")),
    "se_resnext": dict(repo="titu1994/keras-squeeze-excite-network", file="se_resnext.py", licence="MIT",
                       via=TF2ONNX.format(t="test_resnext.py (test_SEResNext)")),
    "resnet50": dict(repo="keras-team/keras-applications", file="keras_applications/resnet50.py (Keras 2.2.4 era)",
                     licence="MIT", via=TF2ONNX.format(t="test_keras_applications.py")),
    "resnet50_cf": dict(repo="keras-team/keras-applications",
                        file="keras_applications/resnet50.py with image_data_format='channels_first' (bn_axis=1)",
                        licence="MIT", via=TF2ONNX.format(t="test_keras_applications.py")),
    "xception": dict(KERAS_APPS, file=KERAS_APPS["file"].format(m="xception")),
    "inception_v3": dict(KERAS_APPS, file=KERAS_APPS["file"].format(m="inception_v3")),
    "mobilenet_v1": dict(KERAS_APPS, file=KERAS_APPS["file"].format(m="mobilenet") + " (called as is)"),
    "mobilenet_v2": dict(KERAS_APPS, file=KERAS_APPS["file"].format(m="mobilenet_v2") + " (called as is)"),
    "mobilenet_v3_small": dict(KERAS_APPS, file=KERAS_APPS["file"].format(m="mobilenet_v3") + " (called as is)"),
    "nasnet": dict(KERAS_APPS, file=KERAS_APPS["file"].format(m="nasnet") + " (NASNet(), called as is)",
                   via=TF2ONNX.format(t="test_nasnet_mobile.py")),
    "densenet": dict(KERAS_APPS, file=KERAS_APPS["file"].format(m="densenet") + " (DenseNet(), called as is)"),
    "efficientnet": dict(KERAS_APPS, file=KERAS_APPS["file"].format(m="efficientnet") + " (EfficientNet(), as is)"),
    "regnet": dict(repo="keras-team/tf-keras", file="tf_keras/src/applications/regnet.py (RegNet(), as is)",
                   licence="Apache-2.0"),
    "efficientnet_v2": dict(KERAS_APPS, file=KERAS_APPS["file"].format(m="efficientnet_v2")
                            + " (EfficientNetV2(), as is)"),
    "teachable_machine": dict(repo="googlecreativelab/teachablemachine-community",
                              file="libraries/image (exported keras_model.h5 layout: nested Sequential around "
                                   "a truncated MobileNetV2 'model1')", licence="Apache-2.0"),
    "mlstm_fcn": dict(repo="titu1994/MLSTM-FCN", file="mlstm_fcn_* scripts (generate_model)", licence="MIT",
                      via=TF2ONNX.format(t="test_mlstm_fcn.py")),
    "deep_speech2": dict(repo="rolczynski/Automatic-Speech-Recognition",
                         file="automatic_speech_recognition/model/deepspeech2.py", licence="AGPL-3.0 (architecture only)",
                         via=TF2ONNX.format(t="test_deep_speech.py (test_deep_speech_2)")),
    "deep_speaker": dict(repo="philipperemy/deep-speaker", file="conv_models.py (DeepSpeakerModel)", licence="MIT",
                         via=TF2ONNX.format(t="test_deep_speaker.py")),
    "crnn_ocr": dict(repo="faustomorales/keras-ocr", file="keras_ocr/recognition.py (build_model)", licence="MIT",
                     via=TF2ONNX.format(t="test_ocr.py")),
    "lipnet": dict(repo="rizkiarm/LipNet", file="lipnet/model2.py (LipNet.build)", licence="MIT",
                   via=TF2ONNX.format(t="test_lipnet.py")),
    "cnn_lstm_td": dict(repo="harvitronix/five-video-classification-methods + maelfabien/Multimodal-Emotion-Recognition",
                        file="models.py (lrcn); time-distributed ConvNet (TD(Conv2D) -> TD(BN))",
                        licence="MIT (harvitronix, read); maelfabien: not stated in the indexed files"),
    "td_speech_emotion": dict(repo="maelfabien/Multimodal-Emotion-Recognition",
                              file="01-Audio time-distributed ConvNet (LFLB blocks)",
                              licence="not stated in the indexed files (architecture only)"),
    "td_convnet_gru": dict(repo="metal3d/keras-video-generators",
                           file="README / docs example (build_convnet, action_model: TimeDistributed(Sequential ConvNet))",
                           licence="MIT (not read)"),
    "td_mobilenet_gru": dict(repo="metal3d/keras-video-generators",
                             file="docs example (build_mobilenet: TimeDistributed(Sequential[MobileNet, GlobalMaxPool2D]))",
                             licence="MIT (not read)"),
    "convlstm": dict(repo="keras-team/keras (Keras 2.x)", file="examples/conv_lstm.py", licence="MIT (Keras <= 2.3)"),
    "bilstm_imdb": dict(repo="keras-team/keras (Keras 2.x)", file="examples/imdb_bidirectional_lstm.py",
                        licence="MIT (Keras <= 2.3)"),
    "embedding_cnn": dict(repo="keras-team/keras (Keras 2.x)", file="examples/imdb_cnn.py", licence="MIT (Keras <= 2.3)"),
    "masking_bn_seq": dict(repo="titu1994/MLSTM-FCN + keras-team/keras-io",
                           file="Masking input (MLSTM-FCN); guides/understanding_masking_and_padding.py",
                           licence="MIT / Apache-2.0"),
    "multi_io": dict(repo="keras-team/keras-io", file="guides/functional_api.py (ticket classifier)",
                     licence="Apache-2.0"),
    "siamese": dict(repo="keras-team/keras-io", file="examples/vision/siamese_contrastive.py", licence="Apache-2.0"),
    "tfop_mix": dict(repo="keras-team/tf-keras + faustomorales/keras-ocr + philipperemy/deep-speaker",
                     file="tf_keras/src/applications/mobilenet_v3.py (hard_sigmoid as raw ops); slicing; reductions",
                     licence="Apache-2.0 / MIT"),
    "dcgan": dict(repo="eriklindernoren/Keras-GAN", file="dcgan/dcgan.py", licence="MIT",
                  via=TF2ONNX.format(t="test_dcgan.py")),
    "acgan": dict(repo="eriklindernoren/Keras-GAN", file="acgan/acgan.py", licence="MIT",
                  via=TF2ONNX.format(t="test_acgan.py")),
    "pix2pix": dict(repo="eriklindernoren/Keras-GAN", file="pix2pix/pix2pix.py (build_generator)", licence="MIT",
                    via=TF2ONNX.format(t="test_pix2pix.py")),
    "srgan": dict(repo="eriklindernoren/Keras-GAN", file="srgan/srgan.py (build_generator)", licence="MIT",
                  via=TF2ONNX.format(t="test_srgan.py")),
    "tf_dcgan_generator": dict(repo="tensorflow/docs", file="site/en/tutorials/generative/dcgan.ipynb",
                               licence="Apache-2.0"),
    "vui_cudnn": dict(repo="udacity/AIND-VUI-Capstone", file="sample_models.py (cnn_rnn_model, deep_rnn_model, "
                      "bidirectional_rnn_model)", licence="not stated (not read)"),
    "mobilevit": dict(repo="keras-team/keras-io", file="examples/vision/mobilevit.py (create_mobilevit)",
                      licence="Apache-2.0"),
    "pointnet": dict(repo="keras-team/keras-io", file="examples/vision/pointnet.py (conv_bn, dense_bn, tnet, "
                     "OrthogonalRegularizer)", licence="Apache-2.0"),
    "ct3d": dict(repo="keras-team/keras-io", file="examples/vision/3D_image_classification.py (get_model)",
                 licence="Apache-2.0"),
    "deeplabv3plus": dict(repo="keras-team/keras-io", file="examples/vision/deeplabv3_plus.py (convolution_block, "
                          "DilatedSpatialPyramidPooling, DeeplabV3Plus)", licence="Apache-2.0"),
    "ecg_resnet": dict(repo="antonior92/automatic-ecg-diagnosis", file="model.py (ResidualUnit, get_model)",
                       licence="not read (architecture: Ribeiro et al. 2020)"),
    "ddim_unet": dict(repo="keras-team/keras-io", file="examples/generative/ddim.py (sinusoidal_embedding, "
                      "ResidualBlock, DownBlock, UpBlock, get_network)", licence="Apache-2.0"),
    "eegnet": dict(repo="vlawhern/arl-eegmodels", file="EEGModels.py (EEGNet; 2018 version channels_first)",
                   licence="CC0-1.0 (not read)"),
    "efficientdet_bifpn": dict(repo="xuannianz/EfficientDet", file="model.py (build_wBiFPN, BoxNet, ClassNet), "
                               "layers.py (wBiFPNAdd)", licence="Apache-2.0 (not read)"),
    "facenet": dict(repo="nyoki-mtl/keras-facenet", file="code/inception_resnet_v1.py (conv2d_bn, "
                    "_inception_resnet_block, InceptionResNetV1)", licence="MIT (not read)"),

    "tcn": dict(repo="philipperemy/keras-tcn", file="tcn/tcn.py; tcn/hollow_class/hollow_class.py (ResidualBlock, "
                "TCN, compiled_tcn; use_batch_norm=True)", licence="MIT (read)"),
    "deep_cross": dict(repo="keras-team/keras-io", file="examples/structured_data/wide_deep_cross_networks.py "
                       "(create_deep_and_cross_model, create_wide_and_deep_model)", licence="Apache-2.0"),
    "tabnet": dict(repo="titu1994/tf-TabNet", file="tabnet/tabnet.py (TransformBlock, TabNet, TabNetClassifier)",
                   licence="MIT (setup.py LICENCE='MIT'; LICENSE file not in the index)"),
    "cbam_resnet": dict(repo="kobiso/CBAM-keras", file="models/resnet_v1.py, models/attention_module.py "
                        "(cbam_block)", licence="MIT (read)"),
    "hrnet": dict(repo="noelcodella/HRNet-keras-semantic-segmentation (fork of niecongchong/HRNet-keras-semantic-"
                  "segmentation)", file="model/seg_hrnet.py (seg_hrnet)", licence="not stated (no LICENSE in the index)"),
    "attrnn_kws": dict(repo="douglas125/SpeechCmdRecognition", file="SpeechModels.py (AttRNNSpeechModel)",
                       licence="MIT (read)"),
    "lstm_densenet": dict(repo="dkamianskii/trading", file="neural_networks/lstm/lstm_model.py (dense_net_static), "
                          "default_blocks.py", licence="not stated (no LICENSE in the index)"),
}

# --------------------------------------------------------------------------- architectures

#: arch -> options: tags, sample shapes for open dims, int ranges, which extra variants exist
ARCHS: dict[str, dict] = {
    "yolov3_tiny": dict(tags={"open_dims", "leaky_relu_alpha", "upsampling", "multi_output"},
                        k3=True, k3h5=True, legacy=["keras-2.1.6"]),
    "yolov3": dict(tags={"open_dims", "leaky_relu_alpha", "upsampling", "multi_output"}, k3=False),
    "mask_rcnn_fpn": dict(tags={"open_dims", "custom_layer", "training_false", "nested", "shared",
                                "upsampling", "multi_output"}, k3=True, custom=True),
    "mask_rcnn_fpn_trainbn": dict(arch="mask_rcnn_fpn", arch_kwargs={"train_bn": True}, ref_twin=True,
                                  tags={"open_dims", "custom_layer", "training_true", "nested", "shared",
                                        "upsampling", "multi_output"}, k3=False, custom=True),
    "unet": dict(tags={"upsampling"}, k3=False, legacy=["keras-2.3.1"]),
    "segnet": dict(tags={"upsampling"}, k3=False, legacy=["keras-2.3.1"]),
    "pspnet": dict(tags={"upsampling"}, k3=True, legacy=["tf-1.15"]),
    "unet_plus_plus": dict(tags={"open_dims", "upsampling"}, k3=True),
    "resnext": dict(tags={"lambda"}, k3=True),
    "resnext_lambda": dict(tags={"lambda_code"}, k3=False, convert={"unsafe": True}),
    "se_resnext": dict(tags={"lambda", "leaky_relu_alpha"}, k3=False),
    "resnet50": dict(tags=set(), k3=True, legacy=["keras-2.2.4"]),
    "resnet50_cf": dict(tags={"channels_first"}, k3=True, legacy=["keras-2.1.6"]),
    "xception": dict(tags={"separable"}, k3=True),
    "inception_v3": dict(tags={"bn_scale_false"}, k3=True),
    "mobilenet_v1": dict(tags={"app"}, k3=True, legacy=["tf-1.13"]),
    "mobilenet_v2": dict(tags={"app"}, k3=True, k3h5=True, legacy=["tf-1.15"]),
    "mobilenet_v3_small": dict(tags={"app", "lambda"}, k3=True),
    "nasnet": dict(tags={"app", "separable"}, k3=True),
    "densenet": dict(tags={"app"}, k3=True),
    "efficientnet": dict(tags={"app"}, k3=True),
    "teachable_machine": dict(tags={"nested", "app"}, k3=True),
    "regnet": dict(tags={"app", "grouped_conv"}, k3=False),
    "efficientnet_v2": dict(tags={"app", "tf_initializer"}, k3=True),
    "mlstm_fcn": dict(tags={"rnn", "mask", "hard_sigmoid"}, k3=True, legacy=["keras-2.2.4"]),
    "deep_speech2": dict(tags={"open_dims", "rnn", "lambda", "timedistributed"}, k3=True,
                         sample={"X": (32, 20)}),
    "deep_speaker": dict(tags={"open_dims", "lambda"}, k3=True, sample={"input": (32, 16, 1)}),
    "crnn_ocr": dict(tags={"lambda", "rnn"}, k3=True),
    "lipnet": dict(tags={"rnn", "timedistributed", "gru_reset_after_false", "hard_sigmoid"}, k3=True),
    "cnn_lstm_td": dict(tags={"timedistributed", "rnn", "hard_sigmoid"}, k3=True, legacy=["keras-2.0.8", "tf-1.13"]),
    "td_speech_emotion": dict(tags={"timedistributed", "open_dims", "rnn"}, k3=True,
                              sample={"Input_MELSPECT": (5, 16, 16, 1)}),
    "td_convnet_gru": dict(tags={"timedistributed", "nested", "rnn"}, k3=True, legacy=["keras-2.2.4", "keras-2.0.8"]),
    "td_mobilenet_gru": dict(tags={"timedistributed", "nested", "rnn", "app"}, k3=True),
    "convlstm": dict(tags={"hard_sigmoid", "open_dims", "rnn"}, k3=True, legacy=["keras-2.1.6"],
                     sample={0: (4, 16, 16, 1)}),
    "bilstm_imdb": dict(tags={"rnn", "embedding", "hard_sigmoid"}, k3=True, legacy=["keras-2.0.8"], ints={0: (0, 2000)}),
    "embedding_cnn": dict(tags={"embedding"}, k3=True, legacy=["keras-2.2.4"], ints={0: (0, 2000)}),
    "masking_bn_seq": dict(tags={"mask", "rnn", "lambda", "timedistributed"}, k3=True, post="zero_tail"),
    "multi_io": dict(tags={"multi_input", "multi_output", "embedding", "open_dims", "rnn"}, k3=True,
                     sample={"title": (12,), "body": (20,)}, ints={"title": (0, 1000), "body": (0, 1000)}),
    "siamese": dict(tags={"shared", "nested", "multi_input", "lambda"}, k3=True),
    "tfop_mix": dict(tags={"lambda"}, k3=True),
    "dcgan": dict(tags={"nested", "leaky_relu_alpha", "upsampling"}, k3=True, k3h5=True,
                  legacy=["keras-2.1.6"]),
    "acgan": dict(tags={"nested", "multi_input", "multi_output", "embedding", "leaky_relu_alpha"}, k3=True,
                  ints={1: (0, 10)}),
    "pix2pix": dict(tags={"leaky_relu_alpha", "upsampling"}, k3=True),
    "srgan": dict(tags={"open_dims", "upsampling"}, k3=True, sample={0: (16, 16, 3)}),
    "tf_dcgan_generator": dict(tags={"conv_transpose"}, k3=True),
    "mobilevit": dict(tags={"attention", "augmentation", "lambda"}, k3=True),
    "vui_cudnn": dict(tags={"rnn", "open_dims", "timedistributed", "cudnn"}, k3=True,
                      legacy=["keras-2.2.4-cudnn"], sample={"the_input": (31, 20)}),
    "pointnet": dict(tags={"custom_object", "bn_momentum_0"}, k3=True, custom=True, legacy=["keras-2.2.4"]),
    "ct3d": dict(tags={"conv3d", "bn_after_pool"}, k3=True, legacy=["keras-2.2.4"]),
    "deeplabv3plus": dict(tags={"dilated", "upsampling"}, k3=True),
    "ecg_resnet": dict(tags={"conv1d", "preactivation"}, k3=True, legacy=["keras-2.2.4"]),
    "ecg_resnet_post": dict(arch="ecg_resnet", arch_kwargs={"postactivation_bn": True}, tags={"conv1d", "preactivation", "bn_center_scale_false"},
                            k3=True),
    "ddim_unet": dict(tags={"multi_input", "lambda_code", "bn_center_scale_false", "upsampling"}, k3=True,
                      custom=True, convert={"unsafe": True}),
    "eegnet": dict(tags={"depth_multiplier", "separable", "constraint"}, k3=True, legacy=["keras-2.2.4"]),
    "eegnet_cf": dict(arch="eegnet", arch_kwargs={"cf": True}, tags={"depth_multiplier", "channels_first", "constraint"}, k3=True),
    "efficientdet_bifpn": dict(tags={"custom_layer", "shared", "separable", "multi_output"}, k3=False, custom=True),
    "facenet": dict(tags={"lambda_code", "bn_scale_false"}, k3=True, custom=True, convert={"unsafe": True},
                    legacy=["keras-2.1.6"]),

    "tcn": dict(tags={"conv1d", "causal", "dilated", "open_dims"}, k3=True, sample={0: (32, 3)}),
    "tcn_lambda": dict(arch="tcn", arch_kwargs={"lambda_slice": True}, tags={"conv1d", "causal", "dilated",
                       "open_dims", "lambda_code"}, k3=False, convert={"unsafe": True}, sample={0: (32, 3)},
                       legacy=["keras-2.2.4"]),
    "deep_cross": dict(tags={"tabular", "scalar_inputs", "multi_input", "embedding", "bn_dense"}, k3=True),
    "wide_deep": dict(arch="deep_cross", arch_kwargs={"wide": True},
                      tags={"tabular", "scalar_inputs", "multi_input", "embedding", "bn_dense", "bn_on_input"},
                      k3=True),
    "tabnet": dict(tags={"tabular", "bn_dense", "bn_on_input", "shared_bn", "lambda"}, k3=True),
    "cbam_resnet": dict(tags={"attention", "shared", "lambda"}, k3=True),
    "hrnet": dict(tags={"upsampling", "noise_after_bn"}, k3=True, legacy=["keras-2.2.4"]),
    "attrnn_kws": dict(tags={"rnn", "attention", "lambda", "bn_single_channel"}, k3=True),
    "lstm_densenet": dict(tags={"rnn", "bn_axis_list", "bn_on_input"}, k3=False),
}

LEGACY_FRAMEWORK_LABEL = {
    "keras-2.0.8": "Keras 2.0.8 (standalone)", "keras-2.1.6": "Keras 2.1.6 (standalone)",
    "keras-2.2.4": "Keras 2.2.4 (standalone)", "keras-2.3.1": "Keras 2.3.1 (standalone)",
    "tf-1.13": "tf.keras 1.13 ('2.2.4-tf')", "tf-1.15": "tf.keras 1.15 ('2.2.4-tf')",
    "keras-2.2.4-cudnn": "Keras 2.2.4 (standalone) with CuDNNLSTM/CuDNNGRU",
}


@dataclass
class Case:
    name: str                 # "<arch>-<variant>", e.g. "yolov3_tiny-tk"
    arch: str                 # key of ARCHS (the arch_* function is ARCHS[..]["arch"] or this)
    framework: str            # "tf_keras" or "keras": the framework that wrote (and loads) the file
    dialect: str              # "tf_keras-2.21", "keras-3", "keras-3-h5", or a legacy dialect label
    suffix: str               # ".h5" or ".keras"
    provenance: dict
    tags: set = field(default_factory=set)
    sample_shapes: dict = field(default_factory=dict)   # input name/index -> shape without batch
    int_ranges: dict = field(default_factory=dict)      # input name/index -> (lo, hi)
    convert_kwargs: dict = field(default_factory=dict)  # extra bnrewrite.convert arguments
    custom: bool = False      # needs the Mask R-CNN BatchNorm class (custom_objects)
    ref_twin: bool = False    # reference comes from a twin file without baked training=True
    post: str | None = None   # input post-processing ("zero_tail")
    arch_kwargs: dict = field(default_factory=dict)
    fixture: dict | None = None  # a real file (realfiles.py): its manifest entry; built by copying it

    @property
    def fn(self) -> Callable:
        from . import archs

        return getattr(archs, "arch_" + ARCHS[self.arch].get("arch", self.arch))

    @property
    def filename(self) -> str:
        return self.name + self.suffix

    @property
    def ref_filename(self) -> str:
        return self.name + ".ref" + self.suffix if self.ref_twin else self.filename

    def custom_objects(self) -> dict | None:
        if not self.custom:
            return None
        from . import archs

        return archs.custom_objects(common.framework(self.framework))

    def describe(self) -> str:
        return f"{self.name}: {self.framework} {self.dialect} {self.suffix} [{', '.join(sorted(self.tags))}]"


def _cases() -> list[Case]:
    out = []
    for arch, o in ARCHS.items():
        base = dict(arch=arch, provenance=PROV[arch if arch in PROV else o.get("arch", arch)],
                    sample_shapes=o.get("sample", {}), int_ranges=o.get("ints", {}),
                    convert_kwargs=o.get("convert", {}), custom=o.get("custom", False),
                    ref_twin=o.get("ref_twin", False), post=o.get("post"), arch_kwargs=o.get("arch_kwargs", {}))
        tags = set(o.get("tags", set()))
        out.append(Case(name=f"{arch}-tk", framework="tf_keras", dialect="tf_keras-2.21", suffix=".h5",
                        tags=tags | {"tf_keras"}, **base))
        if o.get("k3"):
            out.append(Case(name=f"{arch}-k3", framework="keras", dialect="keras-3", suffix=".keras",
                            tags=tags | {"keras3"}, **base))
        if o.get("k3h5"):
            out.append(Case(name=f"{arch}-k3h5", framework="keras", dialect="keras-3-h5", suffix=".h5",
                            tags=tags | {"keras3", "keras3_h5"}, **base))
        for d in o.get("legacy", []):
            extra = {"legacy_dialect"} | ({"seq_list"} if d in ("keras-2.0.8", "keras-2.1.6") else set())
            # a CuDNN file runs nowhere but on a GPU (tf_keras cannot load it on CPU): its reference is
            # the model it was written from, with the standard layers cuDNN's function equals
            cudnn = {"ref_twin": True} if d.endswith("-cudnn") else {}
            out.append(Case(name=f"{arch}-{d.replace('.', '')}", framework="tf_keras", dialect=d, suffix=".h5",
                            tags=tags | {"tf_keras"} | extra, **{**base, **cudnn}))
    for e in realfiles.entries():
        tag = "tf_keras" if e["framework"] == "tf_keras" else "keras3"
        out.append(Case(name=f"{e['name']}-real", arch=e["name"], framework=e["framework"],
                        dialect=f"real file, {e['writer']}", suffix=Path(e["file"]).suffix,
                        provenance=dict(repo=e["repo"], file=f"{e['path']} @ {e['commit'][:12]}",
                                        licence=e["licence"]),
                        tags={"real_file", tag, *e.get("tags", [])}, sample_shapes=e.get("sample", {}),
                        int_ranges=e.get("ints", {}), convert_kwargs=e.get("convert", {}), fixture=e))
    return out


CASES: list[Case] = _cases()
CASES_BY_NAME: dict[str, Case] = {c.name: c for c in CASES}


def select(names: str | None) -> list[Case]:
    """Cases by comma-separated names, arch names or tags (``tag:timedistributed``); all if empty."""
    if not names:
        return list(CASES)
    out = []
    for tok in (t.strip() for t in names.split(",") if t.strip()):
        if tok.startswith("tag:"):
            hit = [c for c in CASES if tok[4:] in c.tags]
        elif tok in CASES_BY_NAME:
            hit = [CASES_BY_NAME[tok]]
        else:
            hit = [c for c in CASES if c.arch == tok or c.name.startswith(tok)]
        if not hit:
            raise KeyError(f"no real-model case matches {tok!r}")
        out += [c for c in hit if c not in out]
    return out


# --------------------------------------------------------------------------- building


def _source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(HERE.glob("*.py")):
        if p.name in ("run.py",):
            continue
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _set_seed(K, seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    K.utils.set_random_seed(seed)


def _save(K, case: Case, model, path: Path) -> None:
    if case.framework == "tf_keras":
        model.save(str(path), include_optimizer=False, save_format="h5")
    else:
        model.save(str(path))


def build(case: Case, folder) -> Path:
    """Build, randomize and save ``case`` into ``folder``; returns the file path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if case.fixture is not None:
        return realfiles.copy_into(case.fixture, folder / case.filename)
    K = common.framework(case.framework)
    K.backend.clear_session()
    seed = common.seed_of(case.arch)  # same weights for every variant of an architecture
    _set_seed(K, seed)
    model = case.fn(K, **case.arch_kwargs)
    common.randomize(model, K, seed)
    path = folder / case.filename
    if case.dialect in LEGACY_FRAMEWORK_LABEL:
        from . import legacy

        with tempfile.TemporaryDirectory(dir=folder) as d:
            tmp = Path(d) / "tfk.h5"
            _save(K, case, model, tmp)
            legacy.rewrite(tmp, path, case.dialect, common.bn_ranks(model, K))
            if case.ref_twin:  # the CuDNN dialect: the file before the rewrite
                shutil.copyfile(tmp, folder / case.ref_filename)
    else:
        _save(K, case, model, path)
    if case.ref_twin and not case.dialect.endswith("-cudnn"):
        kwargs = dict(case.arch_kwargs)
        kwargs["train_bn"] = False
        twin = case.fn(K, **kwargs)
        twin.set_weights(model.get_weights())
        _save(K, case, twin, folder / case.ref_filename)
    K.backend.clear_session()
    return path


def ensure_built(case: Case, folder=CACHE) -> Path:
    """``build`` through a cache: rebuilt when this package's source changed."""
    folder = Path(folder)
    path = folder / case.filename
    stamp = folder / (case.name + ".stamp")
    want = json.dumps({"src": _source_hash(), "case": case.name})
    if path.exists() and stamp.exists() and stamp.read_text() == want and (folder / case.ref_filename).exists():
        return path
    for p in (path, stamp):
        if p.is_dir():  # a real SavedModel folder
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    out = build(case, folder)
    stamp.write_text(want)
    return out


# --------------------------------------------------------------------------- reference


def load(case: Case, path):
    """The writing framework's own loader (these are our own trusted fixtures)."""
    K = common.framework(case.framework)
    co = case.custom_objects()
    if case.framework == "tf_keras":
        return K.models.load_model(str(path), compile=False, custom_objects=co)
    return K.saving.load_model(str(path), compile=False, custom_objects=co, safe_mode=False)


def inputs_for(case: Case, model, seed: int | None = None, batch: int = common.REF_BATCH):
    xs = common.make_inputs(model, common.seed_of(case.name) if seed is None else seed, batch,
                            case.sample_shapes, case.int_ranges)
    if case.post == "zero_tail":
        for i, x in enumerate(xs):
            if x.ndim >= 2 and x.shape[1] > 4:
                for b in range(x.shape[0]):
                    x[b, x.shape[1] - 2 - b:] = 0.0
    return xs


def call(model, xs, seen: dict | None = None):
    """``model(xs, training=False)`` (eager) as numpy arrays in model output order. With ``seen``,
    the model also runs in graph mode (a ``tf.function`` traced for these shapes, as
    ``model.predict`` runs it); where the two disagree the framework is inconsistent with itself
    (TensorFlow's oneDNN runs some eager channels_first 1x1 convolutions wrong on CPU; Keras 3's
    ``vectorized_map`` TimeDistributed goes wrong in graph mode), and ``seen["graph"]`` holds the
    graph-mode outputs (else None) and ``seen["eager_graph_max_abs"]`` the disagreement."""
    x = xs if len(xs) > 1 else xs[0]
    eager = common.as_list(model(x, training=False))
    if seen is not None:
        import tensorflow as tf

        graph = common.as_list(tf.function(lambda a: model(a, training=False), autograph=False)(x))
        seen["eager_graph_max_abs"], agree, _ = common.max_err(graph, eager)  # the parity tolerance
        seen["graph"] = None if agree else graph
    return eager


def reference(case: Case, folder, xs=None):
    """(reference model, inputs, outputs, graph-mode outputs where they differ else None)."""
    folder = Path(folder)
    model = load(case, folder / case.ref_filename)
    if xs is None:
        xs = inputs_for(case, model)
    seen: dict = {}
    want = call(model, xs, seen)
    return model, xs, want, seen["graph"]


def clean_cache(folder=CACHE) -> None:
    shutil.rmtree(folder, ignore_errors=True)


__all__ = ["CASES", "CASES_BY_NAME", "Case", "ARCHS", "PROV", "build", "ensure_built", "load", "reference",
           "inputs_for", "call", "select", "CACHE"]
