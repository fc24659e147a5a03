"""The sharpness measures read off the Hessian, registered: its largest and most negative eigenvalues (one shared
Lanczos run), its trace (Hutch++, or Hutchinson where Hutch++'s vectors would not fit the memory budget) and its
spectral density (SLQ, whose nodes and weights also feed the density figure)."""

from __future__ import annotations

from scipy.stats import sem

from landscape.curvature.costs import LAMBDA_MIN_PRODUCTS, REORTHOGONALIZATION_PER_PARAMETER, UnitCosts
from landscape.curvature.density import spectral_density
from landscape.curvature.hessian import trace_estimate
from landscape.curvature.sharpness import Measured
from landscape.pipelines.measure_registry import Measure, Row, SharpnessConfig, Subject, register_measure, row


def lambda_max_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig) -> list[Row]:
    e, _ = s.eigen(names, sc.tol)
    return [row(label, "lambda_max", Measured(e.top[0], settings=_lanczos_settings(s, names, sc, e.matvecs)))]


def lambda_min_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig) -> list[Row]:
    e, _ = s.eigen(names, sc.tol)
    settings = {**_lanczos_settings(s, names, sc, e.matvecs), "converged": e.min_converged}
    return [row(label, "lambda_min", Measured(e.min, settings=settings))]


def _lanczos_settings(s: Subject, names: list[str], sc: SharpnessConfig, products: int) -> dict:
    return {"tol": sc.tol, "products": products, "parameters": s.hessian(names).dim, "curvature": sc.curvature}


def trace_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig) -> list[Row]:
    t = trace_estimate(s.hessian(names), sc.trace_products, s.spec.seed, s.budget)
    return [row(label, "trace", Measured(t.estimate, t.stderr, {"method": t.method, "products": t.products,
                                                                    "curvature": sc.curvature}))]


def density_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig) -> list[Row]:
    d = spectral_density(s.hessian(names), sc.density_runs, sc.density_steps, s.spec.seed)
    s.densities[label] = {"nodes": d.nodes.tolist(), "weights": d.weights.tolist()}
    first = d.moment(1)
    return [row(label, "density_mean", Measured(
        float(first.mean()), float(sem(first)) if len(first) > 1 else float("nan"),
        {"runs": sc.density_runs, "steps": sc.density_steps, "what": "SLQ first moment, tr(H)/n",
         "curvature": sc.curvature}))]


def _density_cost(sc: SharpnessConfig, u: UnitCosts) -> tuple[float, str]:
    n = sc.density_runs * sc.density_steps
    reorth = 0.0 if u.on_gpu else (sc.density_runs * sc.density_steps**2 * u.parameters
                                   * REORTHOGONALIZATION_PER_PARAMETER)
    return n * u.product + reorth, f"{n} products (SLQ) and ~{reorth:.0f} s of reorthogonalization"


register_measure(Measure("lambda_max", lambda_max_rows, lambda sc, u: (0.0, ""), lambda sc: ("lambda_max",),
                 hessian=True, lanczos=frozenset({"top"})))
register_measure(Measure("lambda_min", lambda_min_rows,
                 lambda sc, u: (LAMBDA_MIN_PRODUCTS * u.product,
                                   f"~{LAMBDA_MIN_PRODUCTS} products of the shifted run for the most negative one"),
                 lambda sc: ("lambda_min",), hessian=True, lanczos=frozenset({"top", "smallest"})))
register_measure(Measure("trace", trace_rows,
                 lambda sc, u: (sc.trace_products * u.product,
                                f"{sc.trace_products} products (Hutch++, or Hutchinson past the memory budget)"),
                 lambda sc: ("trace",), hessian=True))
register_measure(Measure("density", density_rows, _density_cost, lambda sc: ("density_mean",), hessian=True))
