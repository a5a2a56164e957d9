"""CrossGuard policy pack of the dcforge stack: `pulumi preview --policy-pack stacks/policy` (dcforge up adds it).

Only this file creates the `PolicyPack` (its constructor serves the Pulumi engine and never returns); the policies
come from `dcforge_policy.build_policies`, which the tests call directly.
"""

from pulumi_policy import EnforcementLevel, PolicyPack

from dcforge_policy import POLICY_PACK_NAME, build_policies

PolicyPack(
    name=POLICY_PACK_NAME,
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=build_policies(),
    description="dcforge compliance rules (CIS Kubernetes Benchmark, NSA/CISA, Kyverno restricted, Checkov) "
                "over the platform stack's Kubernetes objects, with namespace-scoped GPU exceptions.",
)
