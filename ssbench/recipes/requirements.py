"""`requires: [gpu, network]`: what a recipe needs of the machine, checked before any job runs.

`network` is met offline when every download has a local copy: every pretrained model names a
`weights` file or has torchvision's file in torch's hub cache, and every data set is on disk."""
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


def downloads(recipe: Recipe) -> list[tuple[str, bool]]:
    """What the recipe would download, each with whether a local copy replaces the download: the
    pretrained weights of its models (a `weights` file, or torchvision's file in torch's hub cache)
    and its downloadable data sets (on disk where the loader looks)."""
    from ssbench.data.sources import on_disk
    from ssbench.models.tv import cached_weights

    out = [(f"{m.name}'s pretrained weights", m.weights is not None or cached_weights(m.name.lower()) is not None)
           for m in recipe.models if m.pretrained or m.weights is not None]
    for data in recipe.data_specs():
        local = on_disk(data)
        if local is not None:
            out.append((f"{data.name} (not in {data.data_dir or 'the default places'})", local))
    return out


def missing_requirements(recipe: Recipe) -> list[str]:
    """The recipe's `requires` this machine lacks, each as a short reason. `network` is met offline
    when every download it would make has a local copy; a recipe that downloads nothing we know of
    keeps its declared need (it may be for something else)."""
    import torch

    out = []
    if "gpu" in recipe.requires and not torch.cuda.is_available():
        out.append("a GPU (torch sees no CUDA device)")
    if "network" in recipe.requires:
        items = downloads(recipe)
        needs = [what for what, local in items if not local]
        if (needs or not items) and not network_available():
            hosts = ", ".join(h for h, _ in PROBE_HOSTS)
            out.append(f"a network for {', '.join(needs)} (could not reach {hosts}; or put the files in place: see "
                       "the recipe's header)" if needs else f"a network (could not reach {hosts})")
    return out


def check_requirements(recipe: Recipe) -> None:
    missing = missing_requirements(recipe)
    if missing:
        raise SpecError(f"recipe {recipe.name} requires {' and '.join(missing)}; run it elsewhere or pass --force")
