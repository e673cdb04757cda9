"""Named contexts: servers, platforms and sites (Aegir's provision contexts).

``names`` validates names, ``schema`` types each context's fields, ``store`` holds the
store's interface (``ContextStore``) and its implementation, one TOML file per context
under ``HOME/contexts/`` (see its docstring for the locking protocol).
"""
