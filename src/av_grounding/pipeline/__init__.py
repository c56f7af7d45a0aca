"""The stages: one module per DVC stage, each holding only its orchestration (read the inputs,
reuse or clear earlier output, call the libraries, write the outputs and metrics files).

``stages/<stage>.py`` runs ``av_grounding.cli``, whose ``STAGES`` table names the entry function
of ``av_grounding.pipeline.<stage>``. Nothing in the package imports this one.
"""
