"""Hypothesis strategies for FineTuneJob specs: every field of the CRD, with values a user could
write, values at the edges of their ranges, and strings with the characters that make Kubernetes
names, labels, images and paths go wrong (spaces, slashes, dots, capitals, colons, non-ASCII).
Most drawn specs are valid or nearly so; the API server decides which it accepts.

Left out on purpose: `template.affinity` (free-form, checked only when the pod is created) and the
names of objects that must exist in the namespace for a pod to be admitted
(`template.serviceAccountName`, `template.priorityClassName`): a pod naming a missing one is
refused because of the namespace, not the spec.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Characters that matter to Kubernetes' validation, and a few that never should appear.
TRICKY = "abcz09-._/ :@AZ~é"
text = st.text(alphabet=TRICKY, max_size=70)
padded = st.builds(
    lambda t, pad: pad[0] + t + pad[1], text, st.sampled_from([(" ", ""), ("", " "), ("\t", "\n")])
)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a well-formed value, sometimes tricky text: most drawn specs get far enough to
    reach the pod, and every field is still tried with what breaks names and paths."""
    return st.one_of(*[good] * 12, text, padded)


dns_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
dns_subdomain = st.builds(lambda parts: ".".join(parts), st.lists(dns_label, min_size=1, max_size=3))
name = mostly(dns_subdomain)


def ints(low: int, high: int, edge_low: int, edge_high: int) -> st.SearchStrategy[int]:
    """Mostly within [low, high], sometimes anywhere in [edge_low, edge_high] (past the ends)."""
    return mostly_of(st.integers(low, high), st.integers(edge_low, edge_high))


def floats(low: float, high: float, edge_low: float, edge_high: float) -> st.SearchStrategy[float]:
    return mostly_of(st.floats(low, high, allow_nan=False), st.floats(edge_low, edge_high, allow_nan=False))


def mostly_of(good: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(*[good] * 12, other)


relative_path = st.one_of(
    st.builds(
        "/".join, st.lists(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True), min_size=1, max_size=3)
    ),
    text.filter(bool),
)
qualified_key = st.one_of(
    st.from_regex(r"([a-z0-9]+\.)?[a-z0-9]+/[A-Za-z0-9]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9])?", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9])?", fullmatch=True),
    text,
)
label_value = st.one_of(
    st.from_regex(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9])?)?", fullmatch=True), text
)
quantity = st.one_of(
    st.integers(-2, 10**6),
    st.sampled_from(["500m", "4", "16Gi", "1.5", "0", "100Mi", "2e3", "1Ki", "0.5Gi", "-1", "lots", ""]),
)


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


def volume(writable: bool) -> st.SearchStrategy[dict[str, Any]]:
    """A volume source; claims and CSI volumes (which Pod Security "restricted" allows) most often."""
    read_only = st.booleans() if not writable else st.just(False) | st.booleans()
    claim = st.builds(
        lambda n, ro: {"persistentVolumeClaim": {"claimName": n, **ro}}, name, optional(readOnly=read_only)
    )
    csi = st.builds(
        lambda driver, rest: {"csi": {"driver": driver, **rest}},
        mostly(dns_subdomain),
        optional(
            readOnly=read_only,
            fsType=mostly(st.sampled_from(["", "ext4", "xfs"])),
            volumeAttributes=st.dictionaries(text, text, max_size=3),
            nodePublishSecretRef=st.builds(lambda n: {"name": n}, name),
        ),
    )
    host = st.builds(
        lambda p, t: {"hostPath": {"path": p, **t}},
        st.builds(lambda r: "/" + r, relative_path),
        optional(type=st.sampled_from(["", "DirectoryOrCreate", "Directory", "File", "Socket"])),
    )
    nfs = st.builds(
        lambda server, path, ro: {"nfs": {"server": server, "path": path, **ro}},
        mostly(dns_subdomain),
        st.builds(lambda r: "/" + r, relative_path),
        optional(readOnly=st.booleans()),
    )
    return st.one_of(claim, claim, claim, csi, csi, csi, host, nfs)


toleration = optional(
    key=qualified_key,
    operator=st.sampled_from(["Exists", "Equal"]),
    value=label_value,
    effect=st.sampled_from(["", "NoSchedule", "PreferNoSchedule", "NoExecute"]),
    tolerationSeconds=ints(0, 10**6, -10, -1),
)

pretrained = st.one_of(
    st.just({}),
    st.builds(lambda n: {"name": n}, st.sampled_from(["ResNet18_vd", "ResNet50_vd", "ResNet50_vd_ssld"])),
    st.builds(
        lambda url, sha: {"url": url, **sha},
        mostly(st.sampled_from(["https://example.com/w.pdparams", "https://x/y", "http://example.com/w"])),
        optional(sha256=mostly(st.from_regex(r"[0-9a-f]{64}", fullmatch=True))),
    ),
    st.builds(lambda p: {"path": p}, relative_path),
)

specs: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {
        "dataset": st.builds(
            lambda v, n, rest: {"volume": v, "numClasses": n, **rest},
            volume(writable=False),
            ints(2, 100_000, 0, 100_001),
            optional(
                subPath=relative_path,
                format=st.sampled_from(["list", "folder"]),
                trainList=relative_path,
                valList=relative_path,
                trainDir=relative_path,
                valDir=relative_path,
                imageSize=ints(32, 1024, 16, 1100),
                corruptImages=st.sampled_from(["fail", "skip"]),
                maxCorruptImages=ints(0, 10**6, -1, 10**6 + 1),
                labelList=relative_path,
                cropScaleMin=floats(0.01, 1, -0.1, 1.1),
                horizontalFlip=st.booleans(),
            ),
        ),
        "output": st.builds(
            lambda v, rest: {"volume": v, **rest}, volume(writable=True), optional(subPath=relative_path)
        ),
    },
    optional={
        "image": mostly(st.sampled_from(["registry.example.com/trainer:1", "trainer@sha256:" + "a" * 64])),
        "imagePullPolicy": st.sampled_from(["Always", "IfNotPresent", "Never"]),
        "model": optional(
            architecture=st.sampled_from(
                ["ResNet18_vd", "ResNet34_vd", "ResNet50_vd", "ResNet101_vd", "ResNet152_vd"]
            ),
            pretrained=pretrained,
        ),
        "finetune": optional(
            stripMismatched=st.booleans(),
            freeze=st.sampled_from(["none", "fc-only", "stages", "from-scratch", "auto"]),
            freezeStages=ints(1, 4, 0, 5),
            lrMultList=mostly_of(
                st.lists(st.floats(0, 100, allow_nan=False), min_size=5, max_size=5),
                st.lists(st.floats(-1, 101, allow_nan=False), min_size=4, max_size=6),
            ),
        ),
        "training": optional(
            epochs=ints(6, 1000, 0, 1001),
            batchSize=ints(1, 4096, 0, 5000),
            learningRate=floats(1e-6, 10, -1, 11),
            warmupEpochs=ints(0, 5, -1, 1000),
            momentum=floats(0, 1, -0.1, 1.1),
            weightDecay=floats(0, 1, -0.1, 1.1),
            labelSmoothing=floats(0, 0.99, -0.1, 1.1),
            amp=st.sampled_from(["auto", "off", "float16", "bfloat16"]),
            seed=ints(0, 2**31 - 1, -1, 2**31),
            numWorkers=ints(0, 64, -1, 65),
        ),
        "resources": optional(
            gpus=ints(0, 16, -1, 17), nodes=ints(1, 3, 0, 65), cpu=quantity, memory=quantity
        ),
        "runPolicy": optional(
            backoffLimit=ints(0, 100, -1, 101),
            activeDeadlineSeconds=ints(1, 10**7, 0, 0),
            ttlSecondsAfterFinished=ints(0, 10**7, -1, -1),
            suspend=st.booleans(),
            startTimeoutSeconds=ints(1, 10**6, 0, 0),
            schedulingTimeoutSeconds=ints(0, 10**6, -1, -1),
        ),
        "template": optional(
            labels=st.dictionaries(qualified_key, label_value, max_size=3),
            annotations=st.dictionaries(qualified_key, text, max_size=3),
            nodeSelector=st.dictionaries(qualified_key, label_value, max_size=3),
            tolerations=st.lists(toleration, max_size=3),
            imagePullSecrets=st.lists(st.builds(lambda n: {"name": n}, name), max_size=2),
        ),
    },
)
