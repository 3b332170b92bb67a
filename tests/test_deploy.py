"""deploy/k8s: every manifest parsed and validated against Kubernetes' own schemas (kubernetes-validate,
strict: unknown fields are errors), the Helm values against Zero to JupyterHub's values schema (merged over
the chart's defaults as Helm does), yamllint on every file, and the hub's role hook run on stub spawners."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from grading import pipeline

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "values.yaml")
KUBERNETES = "1.33.0"  # the oldest Kubernetes these manifests claim (appArmorProfile needs 1.30+)


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _helm_merge(defaults: dict, values: dict) -> dict:
    """Helm's coalescing of a chart's values.yaml with -f values: maps merge, everything else replaces."""
    out = copy.deepcopy(defaults)
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _helm_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _z2jh_errors(values: dict) -> list[str]:
    schema = json.loads((K8S / "z2jh" / "values.schema.json").read_text())
    merged = _helm_merge(yaml.safe_load((K8S / "z2jh" / "chart-values.yaml").read_text()), values)
    return [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(merged)]


def test_the_manifests_are_valid_kubernetes_objects():
    assert {p.name for p in MANIFESTS} >= {"postgres.yaml", "storage.yaml", "autograde-job.yaml", "export-job.yaml"}
    kinds = []
    for path in MANIFESTS:
        for doc in _documents(path):
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on any error
            kinds.append(doc["kind"])
    assert {"Job", "StatefulSet", "Service", "NetworkPolicy", "PersistentVolumeClaim", "ConfigMap"} <= set(kinds)


def test_the_validator_rejects_a_misspelt_field():
    job = _documents(K8S / "autograde-job.yaml")[0]
    job["spec"]["completionsMode"] = job["spec"].pop("completionMode")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES, strict=True)


def test_autograding_is_an_indexed_job_whose_pods_grade_one_shard_each():
    job = _documents(K8S / "autograde-job.yaml")[0]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["SHARDS"]) == spec["completions"], "SHARDS must equal the Job's completions"
    command = " ".join(container["command"] + container["args"])
    assert "python -m grading autograde" in command and '--shard "${JOB_COMPLETION_INDEX}/${SHARDS}"' in command
    for k in range(spec["completions"]):
        assert pipeline.parse_shard(f"{k}/{env['SHARDS']}") == (k, spec["completions"])
    with pytest.raises(ValueError):
        pipeline.parse_shard("4/4")
    # the gradebook's URL is a mounted secret file, never an environment variable's value
    assert env["NBGRADER_DB_URL_FILE"].startswith("/etc/dlcv/gradebook/")
    assert not any("postgresql://" in json.dumps(doc) for p in MANIFESTS for doc in _documents(p))


def test_the_course_config_of_the_cluster_compiles():
    config = next(d for d in _documents(K8S / "storage.yaml") if d["kind"] == "ConfigMap")
    compile(config["data"]["nbgrader_config.py"], "nbgrader_config.py", "exec")
    compile((K8S / "nbgrader_config_global.py").read_text(), "nbgrader_config_global.py", "exec")


def test_helm_values_pass_zero_to_jupyterhubs_schema():
    values = yaml.safe_load((K8S / "values.yaml").read_text())
    assert _z2jh_errors(values) == []
    typo = copy.deepcopy(values)
    typo["singleuser"]["storage"]["extraVolumeMount"] = typo["singleuser"]["storage"].pop("extraVolumeMounts")
    assert any("extraVolumeMount" in e for e in _z2jh_errors(typo))


def _spawn(groups: list[str]) -> types.SimpleNamespace:
    """Run values.yaml's pre_spawn_hook on a stub KubeSpawner."""
    values = yaml.safe_load((K8S / "values.yaml").read_text())
    config = types.SimpleNamespace(JupyterHub=types.SimpleNamespace(), KubeSpawner=types.SimpleNamespace())
    for code in values["hub"]["extraConfig"].values():
        exec(compile(code, "extraConfig", "exec"), {"c": config})
    user = types.SimpleNamespace(id=7, groups=[types.SimpleNamespace(name=g) for g in groups])
    spawner = types.SimpleNamespace(
        user=user, extra_labels={}, volumes=[], volume_mounts=[], environment={}, image="student-image"
    )
    config.KubeSpawner.pre_spawn_hook(spawner)
    return spawner


def test_students_get_neither_the_gradebook_nor_the_course_directory():
    student = _spawn([])
    assert student.image == "student-image" and student.extra_labels["dlcv/role"] == "student"
    assert student.volumes == [] and "NBGRADER_DB_URL_FILE" not in student.environment
    instructor = _spawn(["instructors"])
    assert instructor.extra_labels["dlcv/role"] == "instructor" and "instructor" in instructor.image
    assert {v["name"] for v in instructor.volumes} == {"course", "gradebook", "course-config"}
    assert instructor.environment["NBGRADER_DB_URL_FILE"] == "/etc/dlcv/gradebook/url"
    assert student.uid == 20007
    # only instructors and grading pods reach PostgreSQL
    policy = next(d for d in _documents(K8S / "postgres.yaml") if d["kind"] == "NetworkPolicy")
    allowed = [s["podSelector"]["matchLabels"] for s in policy["spec"]["ingress"][0]["from"]]
    assert {"dlcv/role": "student"} not in allowed and {"dlcv/role": "instructor"} in allowed


def test_dockerfile_copies_files_that_exist_and_keeps_solutions_out_of_the_student_image():
    text = (K8S / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, re.M)
    assert {"base", "instructor", "edition", "student"} <= set(stages)
    for source in re.findall(r"^COPY (?!--from)(\S+) ", text, re.M):
        assert source == "." or (REPO / source).exists(), f"COPY {source}: no such file"
    student = text.split("AS student", 1)[1]
    assert "COPY . " not in student and "COPY --from=edition" in student
    assert "test ! -e /srv/dlcv/solutions" in student


def test_yamllint():
    config = (
        "{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}"
    )
    files = [str(p) for p in sorted(K8S.glob("*.yaml"))]
    out = subprocess.run(
        [sys.executable, "-m", "yamllint", "-f", "parsable", "-d", config, *files], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
