"""Tables beyond the paper's: one module per table, each calling
:func:`medmix.evaluation.paper_tables.register_table` with its builder. Every module of this package
is imported before the list of tables is read (the workflow's outputs, the tables job and its code
inputs follow from it), so a new table is a new module here and nothing else
(docs/protocols-and-tables.md, "Add a table")."""
