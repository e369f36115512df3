"""SightScan trainer: labelled images of a city -> an evaluated ONNX detector in the warehouse (see issue 5).

Imports of torch happen in the submodules, so `import trainer` stays cheap for the CLI.
"""
