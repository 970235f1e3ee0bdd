"""`dpbench pretrain SUITE`: the suite's preset pretrained on its public data (or found in the cache)."""

from __future__ import annotations


def cmd_pretrain(args) -> int:
    from dpbench.commands.suites import load_checked_suite, suite_device
    from dpbench.models.pretrain import load_pretrained

    _, suite, _, _ = load_checked_suite(args)
    device = suite_device(args, suite)
    out = load_pretrained(suite, data_root=args.data_root, cache_dir=args.cache_dir, device=str(device),
                          progress=args.progress, force=args.force)
    what = "cache hit" if out.cache_hit else f"trained in {out.seconds:.1f}s"
    print(f"{out.source} ({what}): {out.path}")
    return 0
