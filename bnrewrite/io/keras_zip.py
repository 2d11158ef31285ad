"""Reader for ``.keras`` archives: Keras 3's, and tf.keras 2.14/2.15's.

An archive is a zip with ``config.json`` (the model config),
``metadata.json`` (``keras_version``) and ``model.weights.h5``. tf.keras 2.12-2.15
wrote the same format in its own (Keras 2) dialect, which Keras 3 cannot read: an
archive whose ``keras_version`` is 2.x is a ``tf_keras`` graph, rebuilt by tf_keras
(:func:`_tf_keras_original`). tf.keras 2.12/2.13 kept the weights under generated
names (``_layer_checkpoint_dependencies/conv2d``...) that tf_keras does not read back:
such archives are refused with the way out (save as ``.h5``), never guessed. The archive is
untrusted data, so it is never handed to ``keras.saving.load_model``:

1. the three members are read with :func:`~bnrewrite.io.safe_files.read_zip_members`
   (caps: ``config.json`` 16 MiB, ``metadata.json`` 1 MiB, ``model.weights.h5`` the
   weights limit of the archive's size; enforced while decompressing; nothing is
   extracted to disk);
2. the graph is built from ``config.json`` (Lambda bytecode and unknown classes are
   refused there, before Keras sees anything);
3. ``model.weights.h5`` is read by the HDF5 child process in mode ``weights``
   (:mod:`bnrewrite.io.h5_extract`: no links, no external storage, no virtual
   datasets, declared sizes bounded) into a vetted tree;
4. :func:`build_original` rebuilds the model with Keras 3's own deserializer in safe
   mode and loads the vetted tree with Keras's own state loader from an in-memory
   HDF5 file; the graph's weights are taken from that model's variables, because
   ``model.weights.h5`` stores them by position only.
"""

from __future__ import annotations

import copy
import functools
import io
import json
from pathlib import Path

from ..errors import InputError, root_cause, with_path
from ..graph import ModelGraph
from .config import build_graph
from .safe_files import METADATA_CAP, check_regular, config_limit, memory_h5, read_zip_members, weights_limit
from .weights import live_weights

CONFIG, METADATA, WEIGHTS = "config.json", "metadata.json", "model.weights.h5"
OLD_LAYOUT = "_layer_checkpoint_dependencies"  # tf.keras 2.12/2.13 archives: tf_keras 2.14+ reads "layers"


def read_keras(path: Path, *, unsafe: bool = False, custom_objects: dict | None = None) -> ModelGraph:
    limit = weights_limit(check_regular(path).st_size)
    members = read_zip_members(
        path, {CONFIG: config_limit(), METADATA: METADATA_CAP, WEIGHTS: limit}, what=".keras archive")
    if CONFIG not in members:
        raise InputError(f"{path}: not a Keras 3 archive (no config.json inside)")
    if WEIGHTS not in members:
        raise InputError(f"{path}: Keras archive has no model.weights.h5")
    meta = _json(path, METADATA, members.get(METADATA, b"{}"))
    config = _json(path, CONFIG, members.pop(CONFIG))
    if not isinstance(meta, dict):
        meta = {}

    source = {"path": str(path), "format": "keras", "keras_version": str(meta.get("keras_version", "3"))}
    legacy = source["keras_version"].startswith("2.")  # tf.keras 2.12-2.15 wrote it: tf_keras rebuilds it
    requests: list[tuple[tuple, str, dict]] = []

    def lookup(nest: tuple, name: str, class_name: str) -> dict:
        d: dict = {}
        requests.append((nest, name, d))  # filled once Keras has loaded the weights
        return d

    from .original import Original, bn_subclass_names

    try:
        mg = build_graph(
            config, lookup, legacy=legacy, source=source, unsafe=unsafe,
            custom_classes=frozenset(custom_objects or ()), bn_classes=bn_subclass_names(custom_objects),
        )
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        raise InputError(f"{path}: malformed config.json ({type(e).__name__}: {root_cause(e, 300)})") from None
    except InputError as e:
        raise with_path(e, path) from None

    from .h5 import extract

    tree = extract(path, "weights", data=members.pop(WEIGHTS), limit=limit, member=WEIGHTS)["tree"]
    if legacy and any(g.split("/")[0] == OLD_LAYOUT for g in tree.get("groups", ())):
        raise InputError(
            f"{path}: a .keras archive written by tf.keras {source['keras_version']} keeps its weights under "
            f"{OLD_LAYOUT} by generated names, which neither tf_keras nor Keras 3 reads back; save it as .h5 "
            "with that TensorFlow (model.save('model.h5')) and convert the .h5")
    from .budget import stored_bytes, variable_budget

    try:
        with variable_budget(stored_bytes(tree), mg.framework):
            model = build_original(config, tree, unsafe=unsafe, custom_objects=custom_objects,
                                   framework=mg.framework)
    except InputError as e:
        raise with_path(e, path) from None
    for nest, name, d in requests:
        layer = model
        try:
            for p in (*nest, name):
                layer = layer.get_layer(p)
        except ValueError:
            raise InputError(f"{path}: layer {'/'.join((*nest, name))} not found in the archive") from None
        d.update(live_weights(layer))
    mg.original = Original(framework=getattr(mg, "framework", "keras"), format="keras", config=config,
                           weights=tree, path=str(path))
    return mg


def build_original(config: dict, tree: dict, *, unsafe: bool = False, custom_objects: dict | None = None,
                   framework: str = "keras"):
    """Keras 3's own model for a ``.keras`` archive's ``config`` and vetted weights ``tree``
    (tf_keras's, :func:`_tf_keras_original`, when ``framework`` is ``"tf_keras"``).

    The model is deserialized by ``keras.saving.deserialize_keras_object`` inside
    ``SafeModeScope(not unsafe)`` and an ``ObjectSharingScope`` (as ``load_model`` does,
    without compiling), then its state is loaded by Keras's own ``saving_lib._load_state``
    from an ``H5IOStore`` over :func:`~bnrewrite.io.safe_files.memory_h5` ``(tree)`` -- the
    same ``layers/<name>/vars/<i>`` walk as ``load_model``, over data that can hold no link
    and no external storage. Assets (``assets/`` members) are not read.

    ``tree`` is the weights tree of :mod:`bnrewrite.io.h5_extract` (mode ``weights``).
    Raises InputError when Keras cannot rebuild the model or load the weights (one line).
    """
    if framework == "tf_keras":
        return _tf_keras_original(config, tree, unsafe=unsafe, custom_objects=custom_objects)
    from keras.src.saving import saving_lib

    try:
        model = deserialize_model(config, unsafe=unsafe, custom_objects=custom_objects)
    except InputError:
        raise
    except Exception as e:  # Keras raises many types for a bad config
        raise InputError(f"Keras could not rebuild the model from config.json ({root_cause(e, 300)})") from None

    failed: set = set()
    errors: dict = {}
    f = memory_h5(tree)
    store = _store_class()(f)
    try:
        saving_lib._load_state(
            model, weights_store=store, assets_store=None, inner_path="",
            visited_saveables=set(), failed_saveables=failed, error_msgs=errors,
        )
    except Exception as e:  # noqa: BLE001 - a structure _load_state does not expect
        raise InputError(f"Keras could not load the archive's weights ({root_cause(e, 300)})") from None
    finally:
        store.close()
    if failed:
        # saving_lib._raise_loading_failure's message, on one line
        saveable, err = next(iter(errors.values()))
        what = getattr(saveable, "name", type(saveable).__name__)
        raise InputError(f"Keras could not load the archive's weights ({len(errors)} object(s) could not be "
                         f"loaded; {what!r}: {root_cause(err, 300)})")
    return model


def deserialize_model(config: dict, *, unsafe: bool = False, custom_objects: dict | None = None):
    """Keras 3's own model for a model config, as ``load_model(compile=False)`` deserializes it
    (safe mode unless ``unsafe``, shared objects scope); no weights."""
    import keras  # noqa: F401 - registers Keras's objects
    from keras.src.saving import serialization_lib

    cfg = copy.deepcopy(config)  # Keras's deserializer may edit what it is given
    cfg["compile_config"] = None
    with serialization_lib.SafeModeScope(not unsafe), serialization_lib.ObjectSharingScope():
        return serialization_lib.deserialize_keras_object(cfg, custom_objects=custom_objects, safe_mode=not unsafe)


def _tf_keras_original(config: dict, tree: dict, *, unsafe: bool = False, custom_objects: dict | None = None):
    """tf_keras's own model for an archive tf.keras 2.14/2.15 wrote: its deserializer (safe mode unless
    ``unsafe``) and its state loader over the vetted weights, as its ``load_model`` does. (2.12/2.13
    archives, whose layout no framework reads back, are refused before: :data:`OLD_LAYOUT`.)"""
    import tf_keras
    from tf_keras.src.saving import saving_lib, serialization_lib

    from ..build.tf_keras import require_tf_keras

    require_tf_keras()
    cfg = copy.deepcopy(config)
    cfg["compile_config"] = None
    try:
        with tf_keras.utils.custom_object_scope(custom_objects or {}), \
                serialization_lib.SafeModeScope(not unsafe), serialization_lib.ObjectSharingScope():
            model = serialization_lib.deserialize_keras_object(cfg, custom_objects=custom_objects,
                                                               safe_mode=not unsafe)
    except Exception as e:  # tf_keras raises many types for a bad config
        raise InputError(f"tf_keras could not rebuild the model from config.json ({root_cause(e, 300)})") from None
    store = _tf_keras_store_class()(memory_h5(tree))
    try:
        saving_lib._load_state(model, weights_store=store, assets_store=None, inner_path="",
                               visited_trackables=set())
    except Exception as e:  # noqa: BLE001 - e.g. "expected 2 variables, but received 0"
        raise InputError(f"tf_keras could not load the archive's weights ({root_cause(e, 300)})") from None
    finally:
        store.close()
    return model


@functools.lru_cache(maxsize=None)
def _tf_keras_store_class():
    from tf_keras.src.saving.saving_lib import H5IOStore

    class VettedStore(H5IOStore):
        """tf_keras's ``H5IOStore`` in read mode over an open (in-memory) ``h5py.File``."""

        def __init__(self, h5_file):
            self.root_path, self.mode, self.archive, self.io_file, self.h5_file = None, "r", None, None, h5_file

    return VettedStore


@functools.lru_cache(maxsize=None)
def _store_class():
    """Defined on first use: Keras is imported lazily."""
    from keras.src.saving.saving_lib import H5IOStore

    class VettedStore(H5IOStore):
        """Keras's ``H5IOStore`` in read mode over an already open (in-memory) ``h5py.File``."""

        def __init__(self, h5_file):
            self._vetted = h5_file
            super().__init__(io.BytesIO(), mode="r")

        def _get_h5_file(self, path_or_io, mode=None):
            return self._vetted

    return VettedStore


def _json(path, member: str, raw: bytes):
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise InputError(f"{path}: {member} is not valid JSON ({root_cause(e, 300)})") from None
