"""mmrec: multimodal graph recommenders with honest full-ranking evaluation."""

from mmrec.utils.config import register_resolvers

register_resolvers()

__version__ = "0.1.0"
