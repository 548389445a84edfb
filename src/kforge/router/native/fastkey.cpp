// kforge's native call key: the decision-cache key of a call, read from the tensors' metadata in
// one C call instead of six Python attribute reads per tensor (about 0.1 us against 1 us for two
// tensors and a scalar on a slow host). Built by `python -m kforge.router.native build`; the router
// falls back to its Python key when this is not built (`kforge doctor` says so).
//
// key(args: tuple, kinds: tuple[bool, ...]) -> bytes | None
//   kinds[i] is True where args[i] must be a tensor. For each tensor: its number of dims, sizes,
//   dtype, device (type, index), and one word of contiguous | requires_grad << 1 | (address & 15) << 2;
//   for each other argument a type tag and its value (None, bool, float by its bits, int in 64 bits).
//   Two calls get equal keys exactly when the Python key (`router.calls.signature_fn`) holds the same
//   values, except that it tells 0.0 from -0.0 and one NaN from another (a second, equal decision).
//   None: a call this key does not describe (a tensor subclass with Python dispatch, a sparse or
//   symbolic-shaped tensor, a scalar of another type, too many dims); the caller uses the Python key.
//   TypeError: a non-tensor where a tensor must be (the caller then names the argument).
// lookup(args, kinds, decisions) -> decisions.get(key(args, kinds)), None where key is None.
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>
#include <ATen/core/Tensor.h>

#include <cstring>

namespace {

constexpr int kWords = 128;

enum Tag : int64_t { kNone = 1, kBool = 2, kFloat = 3, kInt = 4 };

// Appends one tensor's words to buf; false when the key cannot describe it.
bool put_tensor(const at::Tensor& t, int64_t* buf, int& k) {
  if (!t.defined() || t.layout() != c10::kStrided) return false;
  c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  if (impl->is_python_dispatch() || impl->has_symbolic_sizes_strides() || !t.has_storage()) return false;
  auto sizes = t.sizes();
  if (k + static_cast<int>(sizes.size()) + 4 > kWords) return false;
  buf[k++] = static_cast<int64_t>(sizes.size());
  for (auto s : sizes) buf[k++] = s;
  buf[k++] = static_cast<int64_t>(t.scalar_type());
  buf[k++] = (static_cast<int64_t>(t.device().type()) << 16) | static_cast<uint16_t>(t.device().index());
  auto address = reinterpret_cast<uintptr_t>(t.data_ptr());
  buf[k++] = (t.is_contiguous() ? 1 : 0) | (t.requires_grad() ? 2 : 0) | static_cast<int64_t>((address & 15) << 2);
  return true;
}

// Appends one scalar's tag and value; false for a type the key does not describe.
bool put_scalar(PyObject* o, int64_t* buf, int& k) {
  if (k + 2 > kWords) return false;
  if (o == Py_None) {
    buf[k++] = kNone;
    buf[k++] = 0;
  } else if (PyBool_Check(o)) {
    buf[k++] = kBool;
    buf[k++] = o == Py_True;
  } else if (PyFloat_CheckExact(o)) {
    double v = PyFloat_AS_DOUBLE(o);
    buf[k++] = kFloat;
    std::memcpy(&buf[k++], &v, sizeof v);
  } else if (PyLong_CheckExact(o)) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
      PyErr_Clear();
      return false;
    }
    buf[k++] = kInt;
    buf[k++] = v;
  } else {
    return false;
  }
  return true;
}

// The key's bytes into buf (k words); 0: done, 1: a call the key does not describe, -1: an error set.
int fill(PyObject* args, PyObject* kinds, int64_t* buf, int& k) {
  if (!PyTuple_Check(args) || !PyTuple_Check(kinds)) {
    PyErr_SetString(PyExc_TypeError, "args and kinds must be tuples");
    return -1;
  }
  Py_ssize_t n = PyTuple_GET_SIZE(kinds);
  if (PyTuple_GET_SIZE(args) != n) {
    PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd", n, PyTuple_GET_SIZE(args));
    return -1;
  }
  try {
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* o = PyTuple_GET_ITEM(args, i);
      bool ok;
      if (PyTuple_GET_ITEM(kinds, i) == Py_True) {
        if (!THPVariable_Check(o)) {
          PyErr_Format(PyExc_TypeError, "argument %zd is a %s, not a tensor", i, Py_TYPE(o)->tp_name);
          return -1;
        }
        ok = put_tensor(THPVariable_Unpack(o), buf, k);
      } else {
        ok = put_scalar(o, buf, k);
      }
      if (!ok) return 1;
    }
  } catch (const std::exception&) {  // a tensor whose metadata cannot be read here: the Python key decides
    return 1;
  }
  return 0;
}

// The key of (args, kinds) as a new bytes object, a new reference to None (a call the key does not
// describe), or nullptr with an error set.
PyObject* make_key(PyObject* args, PyObject* kinds) {
  int64_t buf[kWords];
  int k = 0;
  int state = fill(args, kinds, buf, k);
  if (state < 0) return nullptr;
  if (state > 0) Py_RETURN_NONE;
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(buf), static_cast<Py_ssize_t>(k) * 8);
}

PyObject* key(PyObject*, PyObject* const* argv, Py_ssize_t argc) {
  if (argc != 2) {
    PyErr_SetString(PyExc_TypeError, "key(args: tuple, kinds: tuple)");
    return nullptr;
  }
  return make_key(argv[0], argv[1]);
}

// lookup(args, kinds, decisions: dict) -> the value under key(args, kinds), or None where there is
// none or the key does not describe the call: the hot path's key and dict lookup in one call.
PyObject* lookup(PyObject*, PyObject* const* argv, Py_ssize_t argc) {
  if (argc != 3 || !PyDict_CheckExact(argv[2])) {
    PyErr_SetString(PyExc_TypeError, "lookup(args: tuple, kinds: tuple, decisions: dict)");
    return nullptr;
  }
  PyObject* bytes = make_key(argv[0], argv[1]);
  if (bytes == nullptr || bytes == Py_None) return bytes;
  PyObject* found = PyDict_GetItemWithError(argv[2], bytes);  // borrowed
  Py_DECREF(bytes);
  if (found == nullptr) {
    if (PyErr_Occurred()) return nullptr;
    Py_RETURN_NONE;
  }
  Py_INCREF(found);
  return found;
}

PyMethodDef methods[] = {
    {"key", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(key)), METH_FASTCALL,
     "key(args, kinds) -> bytes | None: the decision-cache key of a call (see fastkey.cpp)"},
    {"lookup", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(lookup)), METH_FASTCALL,
     "lookup(args, kinds, decisions) -> the decision under key(args, kinds), or None"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "kforge_fastkey", "kforge's native call key", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit_kforge_fastkey() { return PyModule_Create(&module); }
