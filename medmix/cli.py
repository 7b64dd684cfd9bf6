"""The ``medmix`` command: inspect the resolved configuration and the expert registry."""

from __future__ import annotations

import argparse
import json
import sys

from medmix.config import ConfigError, committee, expert_identity, load_config
from medmix.datasets.declared import declared_labels


def _info(args) -> int:
    from extractors.registry import get_spec

    cfg = load_config(args.config)
    print(f"config: {args.config} (valid)")
    print(f"seeds: {cfg['seeds']}")
    print(f"methods: {', '.join(cfg['methods'])}")
    print(f"train protocols: {', '.join(cfg['protocols']['train'])}; test protocols: {', '.join(cfg['protocols']['test'])}")
    print(f"expert profile: {cfg['experts']['profile']}")
    used = set()
    for name, ds in cfg["datasets"].items():
        ext = f", external validation on {', '.join(ds['external'])}" if ds.get("external") else ""
        print(f"\ndataset {name}: adapter {ds['adapter']}, task {ds['task']}, role {ds.get('role')}{ext}")
        print(f"  labels: {', '.join(declared_labels(ds))}")
        for mod, mcfg in ds.get("modalities", {}).items():
            members, teacher = committee(cfg, name, mod)
            used |= {m.name for m in members} | ({teacher} if teacher else set())
            team = ", ".join(f"{m.name} ({m.role})" for m in members)
            print(f"  {mod} [{mcfg['kind']}]: {team}; teacher: {teacher or '-'}")
    print("\nexperts in use:")
    for name in sorted(used):
        spec, ident = get_spec(name), expert_identity(cfg, name)
        where = "offline" if spec.offline else "needs weights (hub cache or local_dir)"
        if spec.environment != "main":
            where += f"; runs in environment {spec.environment!r}"
        print(f"  {name:24s} {spec.role:8s} dim {spec.dim:5d}  {ident['model_id'] or '(weight-free)'}"
              f"@{ident['revision'] or '-'}  [{where}]")
    return 0


def _experts(args) -> int:
    from extractors.registry import get_spec, list_experts

    rows = []
    for name in list_experts():
        s = get_spec(name)
        rows.append({"name": name, "kinds": list(s.kinds), "role": s.role, "dim": s.dim, "hub_id": s.hub_id,
                     "revision": s.revision, "offline": s.offline, "paper_name": s.paper_name})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:24s} {r['role']:8s} {','.join(r['kinds']):28s} dim {r['dim']:5d} "
                  f"{'offline' if r['offline'] else r['hub_id']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medmix", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="print the resolved config: datasets, committees, experts")
    p_info.add_argument("--config", default="config.yaml")
    p_info.set_defaults(func=_info)
    p_exp = sub.add_parser("experts", help="list every registered expert")
    p_exp.add_argument("--json", action="store_true")
    p_exp.set_defaults(func=_experts)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"medmix: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
