"""The import path that model cards written before the package was split into layers print:
`from budgetlora.model import load_trained` and `budgetlora.model.build_classifier`. New code
imports from `budgetlora.modeling`."""

from budgetlora.modeling.build import build_classifier
from budgetlora.modeling.run_model import load_trained

__all__ = ["build_classifier", "load_trained"]
