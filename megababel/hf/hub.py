"""Upload an exported directory to the Hugging Face Hub, one branch per growth generation; or a model family, one
repository per member, gathered in one Hub collection.

A dry run uploads nothing and writes OUT.upload.json next to the export: the repo, the branch, and every file with
its size and sha256, i.e. exactly what a real run would send. Errors (no token, no network, no permission) are
raised as HubError before or instead of anything partial; the local export is never touched.
"""
from __future__ import annotations

import json
from pathlib import Path

from megababel.checkpoint.io import file_sha256


class HubError(RuntimeError):
    pass


def upload_plan(folder: Path, repo: str, revision: str) -> dict:
    files = [dict(path=str(f.relative_to(folder)), bytes=f.stat().st_size, sha256=file_sha256(f))
             for f in sorted(folder.rglob("*")) if f.is_file()]
    return dict(repo_id=repo, revision=revision, repo_type="model", files=files)


def push_folder(folder, repo: str, revision: str | None = None, dry_run: bool = False, token: str | None = None) -> str:
    """Upload `folder` (an export) to `repo` on branch `revision` (default gen<G> from its megababel.json)."""
    folder = Path(folder)
    if "/" not in repo or repo.count("/") != 1:
        raise HubError(f"--push-to-hub {repo!r}: give a repo id like user/name")
    if revision is None:
        info = json.loads((folder / "megababel.json").read_text())
        revision = f"gen{info['generation']}"
    plan = upload_plan(folder, repo, revision)
    if dry_run:
        target = folder.with_name(folder.name + ".upload.json")
        target.write_text(json.dumps(plan, indent=1))
        return f"dry run: {len(plan['files'])} files for {repo}@{revision} listed in {target}"
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        raise HubError("huggingface_hub is not installed: pip install huggingface_hub") from None
    api = HfApi(token=token)
    try:
        if api.token is None and token is None:
            from huggingface_hub import get_token
            if get_token() is None:
                raise HubError("no Hugging Face token: run `huggingface-cli login` or set HF_TOKEN")
        api.create_repo(repo, exist_ok=True)
        api.create_branch(repo, branch=revision, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, revision=revision,
                          commit_message=f"megababel export ({revision})")
    except HubError:
        raise
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise HubError(f"upload to {repo}@{revision} failed: {e}") from None
    except Exception as e:  # noqa: BLE001 - requests/httpx connection errors have many types
        raise HubError(f"upload to {repo}@{revision} failed ({type(e).__name__}): {e}") from None
    return f"uploaded {len(plan['files'])} files to https://huggingface.co/{repo}/tree/{revision}"


def push_family(members: list[tuple[Path, str]], title: str, plan_path: Path, dry_run: bool = False,
                token: str | None = None) -> str:
    """Upload each (export folder, repo) to its own repo's main branch, then gather the repos in one collection named
    `title` in the first repo's namespace. A dry run writes every member's upload plan and the collection to
    `plan_path` and uploads nothing."""
    if not members:
        raise HubError("no members to upload")
    namespaces = {repo.split("/")[0] for _, repo in members}
    if any(repo.count("/") != 1 for _, repo in members) or len(namespaces) != 1:
        raise HubError(f"--push {members[0][1]!r}: give a prefix like user/name; every member goes to user/name-genG")
    plan = dict(collection=dict(title=title, namespace=namespaces.pop()),
                members=[upload_plan(Path(folder), repo, "main") for folder, repo in members])
    if dry_run:
        plan_path.write_text(json.dumps(plan, indent=1))
        return (f"dry run: {len(members)} repositories ({', '.join(r for _, r in members)}) and the collection "
                f"{title!r}, listed in {plan_path}")
    for folder, repo in members:
        push_folder(folder, repo, "main", token=token)
    try:
        from huggingface_hub import HfApi
        api = HfApi(token=token)
        collection = api.create_collection(title=title, namespace=plan["collection"]["namespace"], exists_ok=True)
        for _, repo in members:
            api.add_collection_item(collection.slug, item_id=repo, item_type="model", exists_ok=True)
    except Exception as e:  # noqa: BLE001 - as push_folder: HTTP and connection errors have many types
        raise HubError(f"the members are uploaded, but the collection {title!r} failed ({type(e).__name__}): {e}") \
            from None
    return f"uploaded {len(members)} members to the collection https://huggingface.co/collections/{collection.slug}"
