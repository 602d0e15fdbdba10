"""One sample trainer result, shared by the tests (and the operator benchmark) that play the
trainer's part: what a successful 4-epoch finetune of a 10-class job reports."""

from __future__ import annotations

from finetune_contract import ClassScore, FreezeDecision, LoadSummary, TrainerResult

SAMPLE_RESULT = TrainerResult(
    exitCode=0,
    reason="Completed",
    epochs=4,
    epochsRun=4,
    bestEpoch=3,
    top1=0.8125,
    top5=0.96875,
    lastTop1=0.8,
    numClasses=10,
    trainImages=400,
    valImages=80,
    learningRate=0.0125,
    imagesPerSecond=321.0,
    corruptImagesSkipped=0,
    durationSeconds=12.5,
    outputDir="/output/team-a-flowers",
    load=LoadSummary(strippedParameters=["fc.weight", "fc.bias"]),
    freeze=FreezeDecision(
        strategy="fc-only",
        decidedBy="auto",
        rule=1,
        trainableParameters=5130,
        evidence={
            "rule": 1,
            "size": "small",
            "imagesPerClass": 40.0,
            "similar": True,
            "similarity": 0.71,
            "thresholds": {"largeMinPerClass": 100, "largeMinTotal": 10000, "similarity": 0.5},
        },
    ),
    worstClasses=[
        ClassScore("sweet pea", 3, 0.5, 8, 0.571429),
        ClassScore("pink primrose", 0, 0.75, 8, 0.857143),
        ClassScore("hard-leaved pocket orchid", 1, 0.875, 8, 1.0),
    ],
)
