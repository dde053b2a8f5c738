"""The operations blocks of ``params.yaml``: the stack, tracking and promotion, serving, flows."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenfocus.typed import ConfigError


@dataclass
class StackConfig:
    method: str = "ridge"  # ridge | blend | mean: what the registered ensemble uses
    fit_on: str = "val"  # val (held-out split); predictions of training data are never used
    alphas: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])
    # read from each backbone's row: score, entropy, element_mean, category:<name>, share:<name>
    features: list[str] = field(default_factory=lambda: ["score"])
    element_method: str = "mean"  # mean | logistic
    # read once per pair from the ensemble's own element P(yes) (element_method's): element_mean,
    # category:<name>, share:<name>. [] = none
    element_features: list[str] = field(default_factory=list)
    bagging_seeds: int = 1  # per-backbone models averaged (seeds); 1 = no bagging
    # the val pairs redrawn in fine-tuning's styles (SynthMuse's styled/<k>/, k < fit_styled) join
    # the stacker's fit rows beside val's own drawing: weights that hold across drawings, not fitted
    # to one renderer's. The same prompts and labels: still no row a backbone trained on. 0 = val only
    fit_styled: int = 0
    out: str = "models/ensemble"

    def __post_init__(self):
        if self.fit_styled < 0:
            raise ConfigError(f"stack.fit_styled: {self.fit_styled} is below 0")
        if self.fit_styled and self.fit_on != "val":
            raise ConfigError(
                f"stack.fit_styled: {self.fit_styled} adds val's redrawings to the fit; "
                f"it needs stack.fit_on: val, not {self.fit_on!r}"
            )


@dataclass
class TrackingConfig:
    experiment: str = "tokenfocus"
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI wins when set
    model_name: str = "tokenfocus-ensemble"
    promote_bootstrap: int = 500
    promote_seed: int = 0
    promote_rule: str = (
        "ci_low"  # ci_low: the CI's lower bound must clear min_delta | diff: the point estimate
    )
    promote_min_delta: float = 0.0
    #: the ensemble's test metrics a model must reach to be registered at all ({} = no floor)
    quality_floor: dict[str, float] = field(default_factory=dict)
    promote_force: bool = False  # promote over a champion that cannot be loaded, or trained on today's test

    def __post_init__(self):
        if self.promote_rule not in ("ci_low", "diff"):
            raise ConfigError(f"tracking.promote_rule: {self.promote_rule!r} is not ci_low or diff")
        known = {"final", "srcc", "plcc", "krcc", "element_acc"}
        if set(self.quality_floor) - known:
            raise ConfigError(
                f"tracking.quality_floor: unknown metric(s) {sorted(set(self.quality_floor) - known)}; known: {sorted(known)}"
            )
        if self.promote_bootstrap < 1:
            raise ConfigError(f"tracking.promote_bootstrap: {self.promote_bootstrap} is below 1")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 5001
    allowed_root: str = "data"
    max_image_bytes: int = 10_000_000
    max_pixels: int = 4096 * 4096
    workers: int = 1  # uvicorn worker processes, each with its own copy of the ensemble
    threads: int = 0  # torch threads per worker; 0 = the machine's cores / workers
    max_batch: int = 16  # concurrent requests scored together in one batch (1 = no batching)

    def __post_init__(self):
        for name, least in (("workers", 1), ("threads", 0), ("max_batch", 1)):
            if getattr(self, name) < least:
                raise ConfigError(f"serve.{name} must be >= {least}, got {getattr(self, name)}")


@dataclass
class FlowConfig:
    runner: str = "threads"  # threads | dask | dask-address
    dask_workers: int = 2
    dask_address: str = ""
    cron: str = "0 3 * * *"
    retries: int = 2
    retry_delay_s: int = 5
