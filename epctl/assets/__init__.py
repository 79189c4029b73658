"""Files shipped inside the package: the CRD and the demo manifest.

They are copies of ``manifests/base/crd.yaml`` and ``examples/demo.yaml`` (a test keeps them
identical) so that ``epctl demo`` works from an installed wheel, not only from a checkout.
"""

from importlib.resources import files


def read_asset(name: str) -> str:
    return (files(__name__) / name).read_text(encoding="utf-8")
