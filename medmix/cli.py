"""The ``medmix`` command: write a config for your cohort (``init``), inspect the resolved
configuration (``info``), the expert registry (``experts``) and the feature cache (``cache``)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

from medmix import __version__ as medmix_version
from medmix.datasets.declared import declared_labels
from medmix.plan.config import REPO_ROOT, ConfigError, committee, expert_identity, validate_config
from medmix.store.atomic import write_text_atomic

BASE_HELP = "the base config (default: config.yaml here, else the workflow's own)"


def _base_config(base: str) -> Path:
    """The base config as the Snakefile picks it: ``base``; the default ``config.yaml``, when this
    folder has none, is the workflow's own (:data:`REPO_ROOT`)."""
    path = Path(base)
    return REPO_ROOT / "config.yaml" if base == "config.yaml" and not path.is_file() else path


def _effective(base: str, overlays: list[str]) -> tuple[dict, str]:
    """The validated config of ``base`` (:func:`_base_config`) with ``overlays`` merged on top as the
    workflow merges them (:mod:`medmix.plan.overlay`), and how to name it."""
    from medmix.plan.overlay import load_yaml, resolve_files

    base = _config_ref(_base_config(base))

    if not overlays:
        if not Path(base).is_file():
            raise FileNotFoundError(f"config file {base} does not exist")
        return validate_config(load_yaml(base)), base
    for path in overlays:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
    same = Path(base).is_file() and all(Path(p).resolve() == Path(base).resolve() for p in overlays)
    shown = " + ".join(([base] if Path(base).is_file() and not same else []) + overlays)
    try:
        cfg = resolve_files(base, overlays)
    except ValueError as err:  # a file that is not a mapping
        raise ConfigError(str(err)) from None
    return validate_config(cfg), shown


def _info(args) -> int:
    from extractors.registry import get_spec

    cfg, shown = _effective(args.base, args.config or [])
    print(f"config: {shown} (valid)")
    print(f"seeds: {cfg['seeds']}")
    print(f"methods: {', '.join(cfg['methods'])}")
    print(f"train protocols: {', '.join(cfg['protocols']['train'])}; "
          f"test protocols: {', '.join(cfg['protocols']['test'])}")
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
    if args.profile:
        from extractors.fetch import info_lines

        try:
            print("\n" + "\n".join(info_lines(cfg, args.profile)))
        except KeyError as err:
            raise ConfigError(f"medmix info --profile: {err.args[0]}") from None
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


def _cache(args) -> int:
    from medmix.plan.cache_report import CacheReport, ls_lines, show_lines

    cfg, shown = _effective(args.base, args.config or [])
    report = CacheReport(cfg, args.cache)
    if args.cache_command == "ls":
        print("\n".join(ls_lines([report.entry(p) for p in report.files()], f"{args.cache}", shown)))
    else:
        print("\n\n".join("\n".join(show_lines(report.entry(p, full=True))) for p in report.find(args.target)))
    return 0


def _config_ref(path: Path) -> str:
    """A path as a config (or the next command) should name it: relative to the current folder,
    where Snakemake runs, when it lies below it; else absolute."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _snakemake_command(config_ref: str) -> str:
    """The command that runs ``config_ref`` from the current folder: plain ``snakemake`` in the
    medmix folder; elsewhere it names this workflow's Snakefile (whose base config is then the
    folder's own config.yaml, or the workflow's when it has none)."""
    snakefile = REPO_ROOT / "Snakefile"
    elsewhere = not Path("Snakefile").is_file() and snakefile.is_file()
    return f"snakemake{f' -s {snakefile}' if elsewhere else ''} --cores 8 all --configfile {config_ref}"


def _init(args) -> int:
    from medmix.cohort import CohortError
    from medmix.datasets import build_cohort
    from medmix.plan.init_config import InitError, build_overlay, infer_dataset, render
    from medmix.plan.overlay import effective_config, load_yaml

    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"medmix: {out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    base_path = _base_config(args.base)
    if not base_path.is_file():
        print(f"medmix init: the base config {base_path} does not exist", file=sys.stderr)
        return 2
    base = load_yaml(base_path)
    try:
        inf = infer_dataset(
            args.manifest, args.labels, name=args.name, task=args.task, id_column=args.id_column,
            data_root=args.data_root, manifest_ref=_config_ref(Path(args.manifest)),
            data_root_ref=_config_ref(Path(args.data_root)) if args.data_root else None,
            modality_roles=tuple(args.modality_roles) if args.modality_roles else None,
        )
        overlay = build_overlay(inf, base)
    except InitError as err:
        print(f"medmix init: {err}", file=sys.stderr)
        return 2
    # The file must give a valid config over the base and a cohort the manifest adapter builds.
    cfg = validate_config(effective_config(base, [copy.deepcopy(overlay)]))
    try:
        cohort = build_cohort(inf.name, cfg["datasets"][inf.name], ".")
    except CohortError as err:
        print(f"medmix init: the inferred dataset does not build: {err}", file=sys.stderr)
        return 2
    experts = {}
    for mod in cfg["datasets"][inf.name]["modalities"]:
        members, teacher = committee(cfg, inf.name, mod)
        experts[mod] = ", ".join(f"{m.name} ({m.role})" for m in members) + (f"; teacher {teacher}" if teacher else "")
    text = render(overlay, inf, command=_snakemake_command(_config_ref(out)),
                  manifest_ref=_config_ref(Path(args.manifest)), base_ref=_config_ref(base_path), experts=experts)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    for w in inf.warnings:
        print(f"note: {w}", file=sys.stderr)
    splits = cohort.frame["split"].value_counts()
    print(f"wrote {out}: dataset {inf.name} ({len(cohort.frame)} samples: "
          + ", ".join(f"{splits.get(s, 0)} {s}" for s in ("train", "val", "test")) + f"), task {inf.task}, "
          f"modalities {', '.join(f'{m} [{k}]' for m, k in cohort.modalities.items())}, {len(overlay['methods'])} runs")
    print(f"next: {_snakemake_command(_config_ref(out))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["fetch"]:  # extractors.fetch owns its arguments (--profile, --experts, --yes, --update, ...)
        from extractors.fetch import main as fetch_main

        return fetch_main(argv[1:])
    parser = argparse.ArgumentParser(prog="medmix", description=__doc__)
    parser.add_argument("--version", action="version", version=f"medmix {medmix_version}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="write a config for a cohort described by a manifest table",
                            description="Infer a dataset config (modalities, labels, patient, split, protocols, "
                                        "runs) from a manifest and write it as a --configfile for snakemake.")
    p_init.add_argument("--manifest", required=True,
                        help="the cohort table (.csv, .tsv or .parquet), one row per sample")
    p_init.add_argument("--labels", required=True, nargs="+", help="label column(s)")
    p_init.add_argument("--out", required=True, help="the config file to write")
    p_init.add_argument("--name", help="dataset name (default: the manifest's file stem)")
    p_init.add_argument("--task", choices=["binary", "multilabel", "multitask", "multiclass"],
                        help="default: one 0/1 label -> binary, one label of class names -> multiclass, "
                             "several 0/1 labels -> multilabel")
    p_init.add_argument("--id-column", help="sample id column (default: sample_id, id, ... or the first unique column)")
    p_init.add_argument("--data-root", help="where relative paths in the manifest resolve (default: its folder)")
    p_init.add_argument("--modality-roles", nargs=2, metavar=("PRIMARY", "SECONDARY"),
                        help="modality roles of the CP-IMoE missing grid (default: no grid)")
    p_init.add_argument("--base", default="config.yaml",
                        help="the config this file is merged over (default: config.yaml here, else the workflow's own)")
    p_init.add_argument("--force", action="store_true", help="overwrite --out")
    p_init.set_defaults(func=_init)
    p_info = sub.add_parser("info", help="print the resolved config: datasets, committees, experts")
    p_info.add_argument("--config", action="append",
                        help="a config file merged over --base as `snakemake --configfile` merges it (repeatable; "
                             "default: --base alone)")
    p_info.add_argument("--base", default="config.yaml", help=BASE_HELP)
    p_info.add_argument("--profile", help="also list the models of this expert profile: revision, lock state, "
                        "size, in the cache or not (no request)")
    p_info.set_defaults(func=_info)
    # listed here for `medmix --help`; its arguments are extractors.fetch.main's (forwarded above)
    sub.add_parser("fetch", add_help=False, help="download the models of the configured experts into the Hugging "
                   "Face cache (pinned, verified, locked in medmix.lock.json); see medmix fetch --help")
    p_cache = sub.add_parser("cache", help="look into the feature cache: per file the expert, model, revision, "
                             "dim, presence, failed samples and why, fingerprints, stale or fresh")
    cache_sub = p_cache.add_subparsers(dest="cache_command", required=True)
    for name, text in (("ls", "one line per feature file: dataset, modality, expert, role, model, revision, dim, "
                               "rows, presence rate, failed samples, stale / fresh / unused for the config"),
                       ("show", "everything a feature file records, its checksum, and why it is stale")):
        p = cache_sub.add_parser(name, help=text, description=text)
        if name == "show":
            p.add_argument("target", help="a feature file, <dataset>/<modality>/<expert> or <dataset>/<expert>")
        p.add_argument("--config", action="append",
                       help="a config file merged over --base as `snakemake --configfile` merges it (repeatable)")
        p.add_argument("--base", default="config.yaml", help=BASE_HELP)
        p.add_argument("--cache", default="results", help="the results folder holding <dataset>/features/ "
                       "(default: results)")
        p.set_defaults(func=_cache)
    p_exp = sub.add_parser("experts", help="list every registered expert")
    p_exp.add_argument("--json", action="store_true")
    p_exp.set_defaults(func=_experts)
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is met inside this try
        return rc
    except (ConfigError, FileNotFoundError) as err:
        print(f"medmix: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `medmix info | head`: the reader left; no traceback, no error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
