"""Regexes behind ``gen(dtype=...)``, exactly as SGLang's frontend defines them
(``sglang/lang/ir.py``: REGEX_INT, REGEX_FLOAT, REGEX_BOOL, REGEX_STR).

The interpreter turns ``dtype=int`` / ``float`` into ``regex=REGEX_INT`` /
``REGEX_FLOAT`` plus stop strings ``" "`` and ``"\\n"`` (the trailing
``[ \\n]*`` lets the model emit the stop), ``bool`` into ``REGEX_BOOL`` and
``str`` into ``REGEX_STR`` (a double-quoted string of word characters and
whitespace; SGLang avoids ``".*"`` there).
"""

REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""

DTYPE_REGEXES = {"int": REGEX_INT, "float": REGEX_FLOAT, "bool": REGEX_BOOL, "str": REGEX_STR}
