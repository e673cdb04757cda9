"""Named contexts: servers, platforms and sites (Aegir's provision contexts).

``names`` validates names, ``schema`` types each context's fields, ``store`` keeps one
file per context under ``HOME/contexts/`` (see its docstring for the locking protocol).
"""
