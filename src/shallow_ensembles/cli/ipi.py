"""Verbs ``ipi-driver`` and ``ipi run``: the i-PI integration (nothing heavy imported here).

::

    shallow-ensembles ipi-driver --model M --structure S (--unix NAME | --address HOST --port P)
    shallow-ensembles ipi run INPUT.xml --model M [--structure S] [--steps N] [--output DIR]
"""

from __future__ import annotations

import argparse
import sys

_LEVELS = (
    ("--energy-per-atom-lo-eV", "energy_per_atom_lo_eV", "sigma_E per atom (eV/atom) at and "
     "above which a frame is a candidate"),
    ("--energy-per-atom-hi-eV", "energy_per_atom_hi_eV", "sigma_E per atom (eV/atom) at and "
     "above which a frame has failed"),
    ("--forces-lo-eV-per-A", "forces_lo_eV_per_A", "max per-atom force sigma (eV/A) at and "
     "above which a frame is a candidate"),
    ("--forces-hi-eV-per-A", "forces_hi_eV_per_A", "max per-atom force sigma (eV/A) at and "
     "above which a frame has failed"),
)


def register(subparsers) -> None:
    """Add the ``ipi-driver`` and ``ipi`` verbs."""
    driver = subparsers.add_parser(
        "ipi-driver", help="serve a model to a running i-PI server (committee client)",
        description="Serve a shallow ensemble to i-PI: mean energy, forces and virial, and every "
        "member in the extras JSON for <ffcommittee> with <parse_json>true</parse_json>.")
    driver.add_argument("--model", required=True, help="model file")
    driver.add_argument("--structure", required=True, help="ASE-readable structure giving the "
                        "atomic numbers in i-PI's atom order (e.g. i-PI's init file)")
    where = driver.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", metavar="NAME", help="UNIX socket name (i-PI's <address>)")
    where.add_argument("--address", metavar="HOST", help="INET host of the i-PI server")
    driver.add_argument("--port", type=int, help="INET port (with --address)")
    driver.add_argument("--sockets-prefix", default="/tmp/ipi_",
                        help="prefix of UNIX socket files (i-PI's default: /tmp/ipi_)")
    driver.add_argument("--connect-timeout-s", type=float, default=60.0,
                        help="wait this long for the server to appear")
    driver.add_argument("--server-timeout-s", type=float, default=None,
                        help="give up when the connected server sends nothing for this long "
                             "(default: wait forever)")
    _driver_options(driver)
    driver.add_argument("--verbose", action="store_true", help="one line per evaluation")
    driver.set_defaults(func=_run_driver)

    ipi = subparsers.add_parser("ipi", help="run i-PI with the shallow-ensemble driver")
    verbs = ipi.add_subparsers(dest="ipi_verb", required=True)
    run = verbs.add_parser(
        "run", help="start i-PI and the driver on an input, wait, summarize",
        description="Run i-PI on INPUT.xml with the model as its <ffsocket> client. A modified "
        "copy of the input (unique socket addresses, steps, structure) goes to the run folder.")
    run.add_argument("input", metavar="INPUT.xml", help="i-PI input (e.g. md_protocols/ipi/)")
    run.add_argument("--model", required=True, help="model file served as the committee")
    run.add_argument("--structure", help="ASE-readable structure replacing the init file")
    run.add_argument("--steps", type=int, help="replace <total_steps>")
    run.add_argument("--output", help="run folder (default runs/ipi-<input>-<date-time>)")
    run.add_argument("--baseline-model", help="model served (mean only) on the baseline socket "
                     "of a weighted-baseline <ffcommittee>")
    run.add_argument("--timeout-s", type=float, help="stop i-PI after this many seconds")
    _driver_options(run)
    run.set_defaults(func=_run_ipi)


def _driver_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("driver", "evaluation and candidate structures")
    group.add_argument("--device", default="cpu", help="torch device")
    group.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: "
                       "i-PI runs beside the driver and more threads then slow it down)")
    group.add_argument("--dtype", choices=("float32", "float64"), help="default: the model's")
    group.add_argument("--no-member-forces", dest="member_forces", action="store_false",
                       help="send member energies only (i-PI then uses the mean forces for "
                       "every member; no force sigma, no weighted baseline)")
    for flag, dest, text in _LEVELS:
        group.add_argument(flag, dest=dest, type=float, help=text)
    group.add_argument("--candidates", help="extxyz file for non-trusted frames (default "
                       "candidates.extxyz when a level is set)")


def _set_threads(args) -> None:
    import torch

    torch.set_num_threads(max(1, args.threads))


def _driver_kwargs(args) -> dict:
    kwargs = {"device": args.device, "dtype": args.dtype, "member_forces": args.member_forces,
              "candidates": args.candidates}
    kwargs.update({dest: getattr(args, dest) for _, dest, _ in _LEVELS})
    return kwargs


def _run_driver(args) -> int:
    from ..ipi.driver import ShallowEnsembleDriver, serve

    if args.address is not None and args.port is None:
        print("error: --address needs --port", file=sys.stderr)
        return 2
    _set_threads(args)
    driver = ShallowEnsembleDriver(model=args.model, template=args.structure,
                                   verbose=args.verbose, **_driver_kwargs(args))
    target = args.unix if args.unix is not None else f"{args.address}:{args.port}"
    try:
        outcome = serve(driver, unix=args.unix, address=args.address, port=args.port,
                        sockets_prefix=args.sockets_prefix, timeout_s=args.connect_timeout_s,
                        server_timeout_s=args.server_timeout_s)
    except ConnectionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if outcome == "exit":
        print(f"ipi-driver: i-PI ended the run after {driver.n_evaluations} evaluations",
              file=sys.stderr)
    else:
        print(f"ipi-driver: the i-PI server at {target} closed the connection (server gone) "
              f"after {driver.n_evaluations} evaluations; stopping", file=sys.stderr)
    if driver.candidates:
        print(f"ipi-driver: {driver.n_candidates} candidates in {driver.candidates}",
              file=sys.stderr)
    return 0


def _run_ipi(args) -> int:
    from ..ipi.run import IPIRunError, run_ipi

    _set_threads(args)
    try:
        summary = run_ipi(args.input, args.model, structure=args.structure, steps=args.steps,
                          output=args.output, baseline_model=args.baseline_model,
                          driver_options=_driver_kwargs(args), timeout_s=args.timeout_s)
    except IPIRunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0
