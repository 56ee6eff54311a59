"""Machine description written into every benchmark JSON."""
import os
import platform


def machine() -> dict:
    import torch

    from amnesiac.io import versions

    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "versions": versions()}
