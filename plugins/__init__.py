"""The built-in plugins: one module per model and per backend, listed once here.

Adding a backend or a model is one module under ``plugins/`` and one line below. The
pytest run (root ``conftest.py``), the worker processes and every command-line tool read
this list through :func:`infermatrix.host.plugin_manager`; outside packages need no line:
they register through the ``infermatrix`` entry-point group (see README).
"""

BUILTIN_PLUGINS = (
    # models, one module per family
    "plugins.models.resnet",
    "plugins.models.mobilenet",
    "plugins.models.vgg",
    "plugins.models.bert",
    "plugins.models.llama",
    # model variants (--variants), one module per kind of transformation
    "plugins.variants.pruning",
    "plugins.variants.sparsity",
    "plugins.variants.distillation",
    "plugins.variants.qat",
    # backends, one module per backend (variants live beside their backend)
    "plugins.backends.torch",
    "plugins.backends.tensorflow",
    "plugins.backends.plaidml",
    "plugins.backends.onnxruntime",
    "plugins.backends.openvino",
    "plugins.backends.tensorrt",
    "plugins.backends.vllm",
    "plugins.backends.openai_endpoint",
)
