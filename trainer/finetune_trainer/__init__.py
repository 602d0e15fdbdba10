"""The Paddle finetune program that runs inside each FineTuneJob's pod (the PaddleClas recipe)."""
