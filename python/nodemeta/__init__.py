"""nodemeta: a thread-safe metadata store for compiler graph nodes, from Python.

``nodemeta.NodeMetadata`` is a drop-in for PyTorch's
``torch/_export/pass_infra/node_metadata.py`` class: a per-node mapping whose protected
keys (``PROTECTED_KEYS``) may be given when it is built but never written afterwards
(``RuntimeError: Could not override node key: <key>``, raised as ``ProtectedKeyError``, a
``RuntimeError`` subclass). It is a full ``collections.abc.MutableMapping`` and keeps its
entries in a C++ ``MetadataStore``, where nodemeta's parallel C++ passes read and write
them (``nodemeta.fx.run_passes``).

Values: Python reads get back the very object stored (``md[k] is v``) for every object but
exact ints and floats (which come back equal; CPython caches small ints). C++ readers see
None/bool/int/float/str/list/tuple/dict natively (tuples as lists), torch objects as the
graph-file schema has them once ``nodemeta.fx`` is imported, anything else as an opaque
object. Containers are converted when C++ next needs the node (at the latest when run_passes starts): C++ sees their contents as of then.

Thread safety: every operation may be called from any number of Python threads and
alongside C++ threads using the same store; single-key reads and writes are atomic, and
``pop``, ``setdefault``, ``update``, ``clear``, ``popitem``, ``copy``, ``items()`` snapshots
and ``==`` act on one consistent state of the node.

Differences from ``dict`` (see docs/python.md): keys are ``str`` (other keys raise
``TypeError`` on writes and are simply absent on reads); iteration is in key-name order;
``update``/``clear`` are all-or-nothing, so a protected key makes them raise before
anything changes; a reference cycle through a value two nodes share is not collected while
they share it; pickling keeps the entries and the store's protected keys (the nodes of one
store in one pickle come back in one new store; the default store's in the default store).
"""
import collections.abc as _abc
import copy as _copy
import copyreg as _copyreg
import types as _types

from . import _core

__version__ = _core.__version__

ProtectedKeyError = _core.ProtectedKeyError
WriteResult = _core.WriteResult
MetadataStore = _core.MetadataStore
default_store = _core.default_store
release_retired_values = _core.release_retired_values
CppValue = _core.CppValue

#: The keys PyTorch's NodeMetadata protects, and every store protects by default.
PROTECTED_KEYS = frozenset({"val", "stack_trace", "nn_module_stack", "debug_handle", "tensor_meta"})


def _extra_state(obj):
    """A subclass's own state: its __dict__ (if it has one) and its slots' values."""
    slots = {}
    for name in _copyreg._slotnames(type(obj)):
        try:
            slots[name] = getattr(obj, name)
        except AttributeError:
            pass
    return getattr(obj, "__dict__", None), slots


def _set_extra_state(obj, d, slots):
    if d:
        obj.__dict__.update(d)
    for name, value in slots.items():
        setattr(obj, name, value)


class NodeMetadata(_core.NodeMetadataBase):
    """NodeMetadata(data=None): a node's metadata, holding a copy of ``data``.

    ``data`` is a dict (or any mapping, or iterable of pairs); protected keys may be given
    here. The node lives in ``nodemeta.default_store``; ``MetadataStore.create(data)``
    makes one in another store. Subclasses may give ``__init__`` a signature of their own;
    copies and pickles keep their slots and ``__dict__`` (``__init__`` is not called again).
    """

    __slots__ = ()
    __class_getitem__ = classmethod(_types.GenericAlias)

    def __reduce_ex__(self, protocol):
        # _restore_node: the node is made without __init__, in its store, and memoized before
        # its entries are pickled, so a node holding itself round-trips. The store is pickled
        # once per pickle (pickle's memo), so the nodes of one store come back in one new
        # store with the same protected keys (the default store's in the default store).
        return (_restore_node, (type(self), self.store), (self._dict(), *_extra_state(self)))

    def __setstate__(self, state):
        if isinstance(state, tuple):
            entries, d, slots = state
        else:  # (an entries dict, as pickled by nodemeta before 0.2)
            entries, d, slots = state, None, {}
        _core.NodeMetadataBase.__setstate__(self, entries)
        _set_extra_state(self, d, slots)

    def __copy__(self):
        new = self.copy()
        _set_extra_state(new, *_extra_state(self))
        return new

    def __deepcopy__(self, memo):
        new = _core.NodeMetadataBase.__deepcopy__(self, memo)
        d, slots = _extra_state(self)
        _set_extra_state(new, _copy.deepcopy(d, memo), _copy.deepcopy(slots, memo))
        return new


def _restore_node(cls, store):
    return _core._new_in(cls, store)


def _the_default_store():
    return default_store


def _reduce_store(store):
    # A pickled store is its protected keys; unpickled, a new store (nodes are pickled on
    # their own and land in it). The default store unpickles as the default store.
    if store is default_store:
        return (_the_default_store, ())
    return (MetadataStore, (sorted(store.protected_keys),))


_copyreg.pickle(MetadataStore, _reduce_store)


# The views iterate with the C bases' tp_iter (NodeMetadata's own iterators); md.keys()
# and friends make them without calling MappingView.__init__.
class _KeysView(_core._KeysIter, _abc.KeysView):
    __slots__ = ()


class _ValuesView(_core._ValuesIter, _abc.ValuesView):
    __slots__ = ()

    def __contains__(self, value):
        return any(v is value or v == value for _, v in self._mapping._items())


class _ItemsView(_core._ItemsIter, _abc.ItemsView):
    __slots__ = ()


# A virtual MutableMapping (registered, not inherited: NodeMetadata implements every method
# itself, and a class whose metaclass is `type` can be called without an argument tuple).
_abc.MutableMapping.register(NodeMetadata)
_core._set_node_type(NodeMetadata, (_KeysView, _ValuesView, _ItemsView))

# How C++ sees torch objects (TensorMetadata, torch.Size, dtypes, tensors, classes): the
# graph-file schema's shapes. _fxjson imports nothing from torch until torch is loaded.
from . import _fxjson  # noqa: E402

_core._set_converter_hook(_fxjson.converter_for)


def _shutdown():
    _core._shutdown()


def __getattr__(name):
    # PEP 562: nodemeta.fx on first use after a plain ``import nodemeta`` (it imports no
    # torch until torch is given to it; importing it sets the attribute for later uses).
    if name == "fx":
        import importlib
        return importlib.import_module(".fx", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"fx"})


import atexit as _atexit  # noqa: E402

_atexit.register(_shutdown)

__all__ = [
    "NodeMetadata",
    "MetadataStore",
    "ProtectedKeyError",
    "PROTECTED_KEYS",
    "WriteResult",
    "CppValue",
    "default_store",
    "release_retired_values",
]
