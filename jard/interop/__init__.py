"""Optional PyTorch checkpoint import (needs `pip install jard[torch]`).

PyTorch is imported only when a file is read (`load_state_dict`), so this
package imports without it; conversion itself works on NumPy arrays.

    from jard import interop
    model, variables = interop.import_checkpoint(
        'model_cifar_wrn.pt', 'wrn34_10', num_classes=10)

See `jard.interop.torch_import` for the mapping rules and supported
architectures (`CONVERTERS`).
"""

from jard.interop.torch_import import CONVERTERS
from jard.interop.torch_import import convert
from jard.interop.torch_import import Converter
from jard.interop.torch_import import import_checkpoint
from jard.interop.torch_import import load_state_dict
from jard.interop.torch_import import match
