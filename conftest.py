"""Root conftest: loads the infermatrix core plugin and the built-in plugins.

Adding a backend or a model is one module under plugins/ and one line here.
Outside packages need no line: they register through the ``infermatrix``
entry-point group (see README).
"""

BUILTIN_PLUGINS = (
    # models, one module per family
    "plugins.models.resnet",
    "plugins.models.mobilenet",
    "plugins.models.vgg",
    "plugins.models.bert",
    "plugins.models.llama",
    # backends, one module per backend (variants live beside their backend)
    "plugins.backends.torch",
    "plugins.backends.tensorflow",
    "plugins.backends.plaidml",
    "plugins.backends.onnxruntime",
    "plugins.backends.openvino",
    "plugins.backends.tensorrt",
)

pytest_plugins = ["infermatrix.plugin", *BUILTIN_PLUGINS]
