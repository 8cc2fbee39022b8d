"""The pipeline job: TeacherLM's recipe (teacher stages, augmentation, students, evaluation, report) from one
config. `plan` builds the steps, `state` fingerprints them, `preflight` checks them, `job` runs them,
`report` writes report.md / report.json."""
