"""The rule catalogue: importing the rule modules registers their rules once, in this order."""

from __future__ import annotations

from dcforge.compliance.model import Rule
from dcforge.compliance import rules_cluster, rules_pods  # noqa: F401  (registration happens on import)
from dcforge.compliance.registry import RULES as _REGISTERED

RULES: list[Rule] = sorted(_REGISTERED, key=lambda rule: rule.id)
RULES_BY_ID: dict[str, Rule] = {rule.id: rule for rule in RULES}
if len(RULES_BY_ID) != len(RULES):  # a copy-pasted id would silently shadow a rule
    raise RuntimeError("duplicate compliance rule id")
