"""``deploy``: the app as a Hugging Face Space, in one command (huggingface_hub's upload_folder).

The upload holds what the Space runs and nothing else: the app, the package, its examples, the
weights with their cards and configs (no training states), the README (the Space's card, with its
front matter) and the docs it links to. The Hub keeps binary files only through Xet/LFS, so every
binary file uploaded must be covered by a ``filter=lfs`` line of ``.gitattributes``.
"""
from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path

from .common import UserError

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ("app.py", "requirements.txt", "README.md", ".gitattributes", "noisecorr_app/*", "weights/*", "docs/*")
# training states, and the FID classifier (benchmarks only): a Space runs the app, it does not train or score
EXCLUDE = ("*/training/*", "weights/cifar10-classifier/*", "*__pycache__*", "*.pyc", "tests/*", "runs/*", "tools/*")


def _tracked(root: Path) -> list[str]:
    """The files git tracks (so nothing local and untracked is ever published); every file elsewhere."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".git" not in p.parts]


def space_files(root: Path = ROOT) -> list[str]:
    """The repository paths a Space needs."""
    keep = lambda f: any(fnmatch.fnmatch(f, pat) for pat in INCLUDE) and not any(fnmatch.fnmatch(f, pat) for pat in EXCLUDE)
    return sorted(f for f in _tracked(root) if keep(f) and (root / f).is_file())


def is_binary(path: Path) -> bool:
    with open(path, "rb") as fh:
        return b"\0" in fh.read(8192)


def lfs_patterns(root: Path = ROOT) -> list[str]:
    lines = (root / ".gitattributes").read_text().splitlines() if (root / ".gitattributes").exists() else []
    return [line.split()[0] for line in lines if "filter=lfs" in line and not line.lstrip().startswith("#")]


def uncovered_binaries(files: list[str], root: Path = ROOT) -> list[str]:
    """Binary files of ``files`` that no LFS pattern of .gitattributes covers (the Hub would refuse them)."""
    pats = lfs_patterns(root)
    return [f for f in files if is_binary(root / f) and not any(fnmatch.fnmatch(Path(f).name, p) for p in pats)]


def add_parser(sub):
    d = sub.add_parser("deploy", help="publish the app as a Hugging Face Space (gradio SDK), files listed with --dry-run")
    d.add_argument("--space", required=True, help="the Space's repo id, owner/name (created if missing)")
    d.add_argument("--private", action="store_true", help="create the Space private")
    d.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    d.add_argument("--message", default="Deploy noisecorr", help="the commit message on the Space")
    d.set_defaults(func=run)


def run(a):
    files = space_files()
    bad = uncovered_binaries(files)
    if bad:
        raise UserError(f"binary files not covered by an LFS line in .gitattributes (the Hub refuses them): "
                        f"{', '.join(bad[:5])}")
    size = sum((ROOT / f).stat().st_size for f in files)
    print(f"{len(files)} files, {size / 1e6:.1f} MB")
    if a.dry_run:
        print("\n".join(files))
        return
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(a.space, repo_type="space", space_sdk="gradio", private=a.private, exist_ok=True)
        info = api.upload_folder(folder_path=str(ROOT), repo_id=a.space, repo_type="space", allow_patterns=files,
                                 commit_message=a.message)
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise UserError(f"the upload to {a.space} failed: {str(e).splitlines()[0]} (log in with `hf auth login` "
                        f"or set HF_TOKEN)") from None
    print(f"uploaded to https://huggingface.co/spaces/{a.space} ({info.commit_url if hasattr(info, 'commit_url') else info})")
