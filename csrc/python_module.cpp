// `import recogfast._C` loads this shared library, whose static initialisers register the ops with
// the dispatcher. Ops are reached through torch.ops.recogfast.*, so no bindings are needed, and the
// stub uses only Python's limited API (3.10 on): one _C.abi3.so serves every CPython from 3.10 on.
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000
#endif
#include <Python.h>

static struct PyModuleDef recogfast_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                                "recogfast's compiled kernels (ops under torch.ops.recogfast)",
                                                -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&recogfast_c_module); }
