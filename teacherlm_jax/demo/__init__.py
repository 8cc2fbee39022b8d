"""The demo's own steps for the pipeline job (configs/demo.py): the synthetic suite's files (suite.py) and a
tokenizer trained on them (tokenizer.py)."""
