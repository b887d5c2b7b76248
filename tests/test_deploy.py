"""The Space upload: what a Space needs and nothing else, every binary file stored through Xet/LFS."""
import re

from noisecorr_app.cli import main
from noisecorr_app.cli.deploy import ROOT, space_files, uncovered_binaries


def test_the_upload_set_is_the_app_its_weights_and_nothing_else():
    files = space_files()
    for needed in ("app.py", "requirements.txt", "README.md", ".gitattributes", "noisecorr_app/ui/app.py",
                   "weights/noisecorr-ddpm-cifar10/unet/diffusion_pytorch_model.safetensors",
                   "weights/noisecorr-ddpm-cifar10/noisecorr.json", "weights/cifar10-noise-estimator/model.safetensors",
                   "noisecorr_app/ui/examples/cifar10_cat.png"):
        assert needed in files, needed
    assert not [f for f in files if f.startswith(("tests/", "runs/", "tools/", ".ci/")) or "/training/" in f]
    assert not [f for f in files if "cifar10-classifier" in f]                # benchmarks only
    assert uncovered_binaries(files) == []
    assert main(["deploy", "--space", "someone/noisecorr", "--dry-run"]) == 0


def test_an_uncovered_binary_is_found(tmp_path):
    (tmp_path / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (tmp_path / "b.safetensors").write_bytes(b"\0\1\2")
    (tmp_path / "c.txt").write_text("text")
    assert uncovered_binaries(["a.png", "b.safetensors", "c.txt"], tmp_path) == ["a.png"]


def test_the_readme_is_a_space_card():
    front = re.match(r"^---\n(.*?)\n---\n", (ROOT / "README.md").read_text(), re.S).group(1)
    fields = dict(line.split(": ", 1) for line in front.splitlines() if ": " in line)
    assert fields["sdk"] == "gradio" and fields["app_file"] == "app.py" and fields["suggested_hardware"]


def test_launch_obeys_the_space_host_and_port(monkeypatch):
    """A Space sets GRADIO_SERVER_NAME=0.0.0.0 (and the port): the app must bind there, not loopback."""
    from noisecorr_app.ui.app import launch

    class Demo:
        def launch(self, **kw):
            return kw

    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    kw = launch(Demo())
    assert kw["server_name"] == "0.0.0.0" and kw["server_port"] == 7999
    monkeypatch.delenv("GRADIO_SERVER_NAME")
    monkeypatch.delenv("GRADIO_SERVER_PORT")
    monkeypatch.delenv("HOST", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    assert launch(Demo())["server_name"] == "127.0.0.1"


def test_the_cli_never_replaces_earlier_results_silently(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "imgs"
    args = ["sample", "--model", str(tiny_model_dir), "--steps", "2", "--n", "2", "--method", "none",
            "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    first = (out / "seed000000.png").read_bytes()
    capsys.readouterr()
    assert main(args + ["--seed", "1"]) == 2                      # seed000001.png is there already
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "seed000000.png").read_bytes() == first
    assert main(args + ["--overwrite"]) == 0
    (tmp_path / "afile").write_text("x")
    assert main(args[:-4] + ["--out", str(tmp_path / "afile"), "--device", "cpu"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_concurrent_cache_writes_do_not_collide(tmp_path):
    """Two writers of one cache file each write their own temporary file, then rename it into place."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from noisecorr_app.extras.storage import atomic_write

    target = tmp_path / "cache.npz"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: atomic_write(target, lambda t: np.savez(t, x=np.full(100_000, i)), suffix=".npz"),
                      range(16)))
    assert len(set(np.load(target)["x"])) == 1 and not [p for p in tmp_path.iterdir() if p != target]
