"""`requires: [gpu, network]`: what a recipe needs of the machine, checked before any job runs."""
from __future__ import annotations

import socket
import threading

from ssbench.errors import SpecError
from ssbench.recipes.schema import Recipe

# hosts the network recipes need (torchvision weights, CIFAR); reaching one is taken as "online"
PROBE_HOSTS = (("download.pytorch.org", 443), ("www.cs.toronto.edu", 443))


def network_available(hosts: tuple[tuple[str, int], ...] = PROBE_HOSTS, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to any probe host opens within ``timeout`` seconds (DNS included:
    the probe runs in a daemon thread, since name resolution itself has no timeout)."""
    ok = threading.Event()

    def probe() -> None:
        for host in hosts:
            try:
                socket.create_connection(host, timeout=timeout).close()
                ok.set()
                return
            except OSError:
                continue

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout * len(hosts) + 1.0)
    return ok.is_set()


def missing_requirements(recipe: Recipe) -> list[str]:
    """The recipe's `requires` this machine lacks, each as a short reason."""
    import torch

    out = []
    if "gpu" in recipe.requires and not torch.cuda.is_available():
        out.append("a GPU (torch sees no CUDA device)")
    if "network" in recipe.requires and not network_available():
        out.append("a network (could not reach " + ", ".join(h for h, _ in PROBE_HOSTS) + ")")
    return out


def check_requirements(recipe: Recipe) -> None:
    missing = missing_requirements(recipe)
    if missing:
        raise SpecError(f"recipe {recipe.name} requires {' and '.join(missing)}; run it elsewhere or pass --force")
