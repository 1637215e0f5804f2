// `import recogfast._C` loads this shared library, whose static initialisers register the ops with
// the dispatcher. Ops are reached through torch.ops.recogfast.*, so no pybind11 bindings are needed.
#include <Python.h>

static struct PyModuleDef recogfast_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                                "recogfast's compiled kernels (ops under torch.ops.recogfast)",
                                                -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&recogfast_c_module); }
