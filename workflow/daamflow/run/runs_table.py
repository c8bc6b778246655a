"""The runs.csv schema: the one table of a run that the report, the claims and the analyses read (one row per
fold/seed; docs/architecture.md#4-runscsv-schema). Torch-free, so that readers do not pay for the trainer's imports."""

# runs.csv: one row per fold/seed, in this column order
RUNS_COLUMNS = (
    "dataset",                    # config key of the dataset
    "encoder",                    # config key of the encoder
    "protocol",                   # paper | clean
    "method",                     # the run's label: <method> or <method>@<variant> (daam_v1@high, lora_r4@released)
    "fold",                       # fold/seed name (fold1, run1, ...)
    "seed",                       # the fold's training seed
    "accuracy",                   # test accuracy of the selected model
    "macro_f1",                   # test macro-F1 of the selected model
    "best_epoch",                 # the selected epoch (the earliest with the best selection accuracy)
    "epochs_run",                 # epochs trained
    "params",                     # trained parameters, classifier included
    "params_without_classifier",  # trained parameters without the classifier
    "wall_time_s",                # training wall time of the fold (seconds)
    "settings_hash",              # identity.settings_hash of the job's settings
    "identity",                   # identity.fold_identity: settings and input digests
    "features_sha256",            # the feature store's features.npy digest; empty for LoRA (no store)
)
