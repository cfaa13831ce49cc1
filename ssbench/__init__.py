"""ssbench: benchmark learning rules that avoid weight transport.

Library first; the `ssbench` CLI is a thin layer over it:

    import ssbench
    model = ssbench.convert(net, "usf")
    with ssbench.exact_gradients(model): ...
"""
from ssbench.errors import SsbenchError
from ssbench.rules import alignment_metrics, convert, exact_gradients, feedback_layers, model_rule

__version__ = "0.1.0"
__all__ = ["SsbenchError", "convert", "exact_gradients", "alignment_metrics", "feedback_layers", "model_rule", "__version__"]
