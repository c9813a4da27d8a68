#!/usr/bin/python3
"""pgstay.ini(5) from doc/config.md's key tables, checked against src/config/config.c's key table.

  /usr/bin/python3 tools/manpages.py           # writes doc/pgstay.ini.5
  /usr/bin/python3 tools/manpages.py --check   # make check: fails if a key of config.c is not
                                               # documented, a documented key does not exist,
                                               # or doc/pgstay.ini.5 differs from what it would
                                               # generate (the page can never drift from the doc)

The page is generated, not written: doc/config.md is the one place a key is described. pgstay(1)
is doc/pgstay.1, written by hand (it changes with main.c's usage, which it is checked against).
"""
import re
import sys

ROOT = __file__.rsplit("/tools/", 1)[0]
CONFIG_C = ROOT + "/src/config/config.c"
CONFIG_MD = ROOT + "/doc/config.md"
MAIN_C = ROOT + "/src/main.c"
PAGE5 = ROOT + "/doc/pgstay.ini.5"
PAGE1 = ROOT + "/doc/pgstay.1"
HEADER = "| key | type | default | reload | meaning |"


def code_keys():
    return re.findall(r'\{"([a-z_]+)", KT_', open(CONFIG_C).read())


def doc_sections():
    """[(section title, [(key, type, default, reload, meaning)])] for every key table."""
    out, title, rows, in_table = [], None, None, False
    for line in open(CONFIG_MD):
        line = line.rstrip("\n")
        if line.startswith("## "):
            title = line[3:].strip()
        if line.strip() == HEADER:
            rows, in_table = [], True
            out.append((title, rows))
            continue
        if in_table:
            if not line.startswith("|"):
                in_table = False
                continue
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if len(cells) < 5 or set(cells[0]) <= set("-"):
                continue
            m = re.fullmatch(r"`([a-z_]+)`", cells[0])
            if m:
                rows.append((m.group(1), cells[1], cells[2], cells[3], " | ".join(cells[4:])))
    return out


def roff(text):
    """Markdown inline text to roff: backslashes escaped, `code` and **bold** in bold."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"`([^`]*)`", r"\\fB\1\\fR", text)
    text = re.sub(r"\*\*([^*]*)\*\*", r"\\fB\1\\fR", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def page5():
    lines = [
        '.TH PGSTAY.INI 5 "" "pgstay" "File Formats"',
        ".SH NAME",
        "pgstay.ini \\- configuration file of pgstay, a failover-aware PostgreSQL proxy",
        ".SH DESCRIPTION",
        "pgstay reads one INI file, given on its command line, and reads it again on SIGHUP. "
        "Sections: \\fB[pgstay]\\fR (the keys below), \\fB[nodes]\\fR (the PostgreSQL servers, "
        "\\fIname\\fR = host=\\fIH\\fR port=\\fIP\\fR), \\fB[databases]\\fR and \\fB[users]\\fR "
        "(per-database and per-user pool_size). Key names follow PgBouncer's where PgBouncer "
        "has the same setting. \"Reload: yes\" means SIGHUP applies a new value; for the others "
        "a change is logged and the running value kept until a restart.",
        ".PP",
        "This page is generated from doc/config.md by tools/manpages.py; doc/config.md has the "
        "syntax, the value types and examples.",
    ]
    for title, rows in doc_sections():
        lines.append(".SH " + roff(title.upper()))
        for key, typ, default, reload, meaning in rows:
            lines.append(".TP")
            lines.append("\\fB%s\\fR (%s; default %s; reload: %s)" % (
                key, roff(typ), roff(default), roff(reload)))
            lines.append(roff(meaning))
    lines += [".SH SEE ALSO", "\\fBpgstay\\fR(1), \\fBpgbouncer\\fR(5)"]
    return "\n".join(lines) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    code = code_keys()
    documented = [k for _, rows in doc_sections() for k, *_ in rows]
    problems = []
    for k in sorted(set(code) - set(documented)):
        problems.append("key %s (src/config/config.c) is not in doc/config.md's key tables" % k)
    for k in sorted(set(documented) - set(code)):
        problems.append("doc/config.md documents %s, which src/config/config.c does not know" % k)
    for k in sorted({k for k in documented if documented.count(k) > 1}):
        problems.append("doc/config.md documents %s twice" % k)
    main_c = open(MAIN_C).read()
    usage = main_c[main_c.index("static void usage"):]
    usage = usage[:usage.index("\n}\n")]
    page1 = open(PAGE1).read().replace("\\-", "-")
    for flag in sorted(set(re.findall(r"(?<![\w-])(-[A-Za-z]|--[a-z][a-z-]+)\b", usage))):
        if flag not in page1:
            problems.append("pgstay's option %s (src/main.c) is not in doc/pgstay.1" % flag)
    text = page5()
    if check:
        try:
            current = open(PAGE5).read()
        except OSError:
            current = ""
        if current != text:
            problems.append("doc/pgstay.ini.5 is not what doc/config.md generates: run "
                            "/usr/bin/python3 tools/manpages.py")
    else:
        with open(PAGE5, "w") as f:
            f.write(text)
    for p in problems:
        print("manpages: " + p, file=sys.stderr)
    if not problems:
        print("manpages: ok (%d keys documented, doc/pgstay.ini.5 %s)"
              % (len(code), "up to date" if check else "written"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
