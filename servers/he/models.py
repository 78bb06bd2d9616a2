"""Models registered for CKKS serving: the owner's plaintext plans, on disk.

In this mode the server evaluates its owner's model in the clear on
encrypted inputs, so a plan is stored as plain numbers
(``<data_dir>/he/models/<model_id>/plan.npz`` and ``meta.json``). Access
follows the MPC registry's rule: the owner and the identities it allows.
Registration compiles the plan for both layouts (checking its depth against
the parameter set) and encodes every weight plaintext, so the first request
pays nothing extra; a restart re-encodes in the background.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.he.layout import MODES
from ppml.proto.he.params import ParamError, param_set
from ppml.proto.he.plan import HePlan, PlanError
from ppml.proto.ids import check_id
from ppml.servers.he.evaluate import CompiledPlan

MAX_MODELS = 64


@dataclass(frozen=True)
class HeModel:
    model_id: str
    name: str
    owner: str
    param_set: str
    allowed: tuple[str, ...]
    plan: HePlan
    compiled: dict[str, CompiledPlan]


class HeModelRegistry:
    def __init__(self, data_dir: Path, max_models: int = MAX_MODELS) -> None:
        self._root = Path(data_dir) / "he" / "models"
        self._root.mkdir(parents=True, exist_ok=True)
        self._max = max_models
        self._lock = threading.Lock()
        self._models: dict[str, HeModel] = {}
        for folder in sorted(self._root.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                try:
                    self._models[folder.name] = self._read(folder)
                except (OSError, ValueError, PlanError, ParamError):
                    continue  # a damaged entry is skipped, never half-served
        threading.Thread(target=self._warm_all, name="he-warm", daemon=True).start()

    def _warm_all(self) -> None:
        for model in list(self._models.values()):
            for compiled in model.compiled.values():
                compiled.warm()

    @staticmethod
    def _compile(plan: HePlan, name: str) -> dict[str, CompiledPlan]:
        params = param_set(name)
        return {mode: CompiledPlan(plan, params, mode) for mode in MODES}

    def _read(self, folder: Path) -> HeModel:
        meta = json.loads((folder / "meta.json").read_text())
        plan = HePlan.from_bytes((folder / "plan.npz").read_bytes())
        return HeModel(
            meta["model_id"],
            meta["name"],
            meta["owner"],
            meta["param_set"],
            tuple(meta["allowed"]),
            plan,
            self._compile(plan, meta["param_set"]),
        )

    def register(
        self,
        model_id: str,
        name: str,
        owner: str,
        set_name: str,
        plan_bytes: bytes,
        allowed: tuple[str, ...],
    ) -> HeModel:
        check_id(model_id, "model_id")
        try:
            plan = HePlan.from_bytes(plan_bytes)
            compiled = self._compile(plan, set_name)
        except (PlanError, ParamError) as e:
            raise PpmlError(ErrorCode.INVALID_MODEL, str(e)) from None
        model = HeModel(model_id, name[:200], owner, set_name, tuple(allowed), plan, compiled)
        with self._lock:
            if model_id in self._models:
                raise PpmlError(ErrorCode.MODEL_EXISTS, f"CKKS model {model_id!r} already exists")
            if len(self._models) >= self._max:
                raise PpmlError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"this server serves at most {self._max} CKKS models",
                )
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self._root))
            (staging / "plan.npz").write_bytes(plan.to_bytes())
            meta = {
                "model_id": model_id,
                "name": model.name,
                "owner": owner,
                "param_set": set_name,
                "allowed": list(allowed),
            }
            (staging / "meta.json").write_text(json.dumps(meta))
            try:
                staging.rename(self._root / model_id)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._models[model_id] = model
        for c in compiled.values():
            c.warm()
        return model

    def get(self, model_id: str, caller: str) -> HeModel:
        with self._lock:
            model = self._models.get(model_id)
        if model is None:
            raise PpmlError(ErrorCode.MODEL_NOT_FOUND, f"no CKKS model {model_id[:80]!r} here")
        if caller != model.owner and caller not in model.allowed:
            raise PpmlError(
                ErrorCode.PERMISSION_DENIED, f"CKKS model {model_id!r} is not shared with you"
            )
        return model

    def delete(self, model_id: str, caller: str) -> HeModel:
        """Owner only: the model leaves memory and disk (a damaged entry never half-serves)."""
        model = self.get(model_id, caller)
        if caller != model.owner:
            raise PpmlError(
                ErrorCode.PERMISSION_DENIED, f"only the owner may delete CKKS model {model_id!r}"
            )
        with self._lock:
            self._models.pop(model_id, None)
            folder = self._root / model_id
            if folder.exists():
                trash = Path(tempfile.mkdtemp(prefix=".deleted-", dir=self._root))
                folder.rename(trash / model_id)
                shutil.rmtree(trash, ignore_errors=True)
        return model

    def list(self, caller: str) -> list[HeModel]:
        with self._lock:
            models = list(self._models.values())
        return [m for m in models if caller == m.owner or caller in m.allowed]
