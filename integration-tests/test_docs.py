"""The documentation that is generated from code stays in step with it."""
import os
import subprocess

from harness import env

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BEGIN = "<!-- BEGIN kowloon-config --markdown -->\n"
END = "<!-- END kowloon-config --markdown -->"


def test_configuration_md_matches_the_settings_table():
    tool = os.path.join(env("KLTEST_BUILD_DIR"), "lib", "kowloon-config")
    table = subprocess.run([tool, "--markdown"], check=True, capture_output=True,
                           text=True).stdout
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        doc = f.read()
    assert BEGIN in doc and END in doc, "docs/configuration.md lost its markers"
    documented = doc.split(BEGIN, 1)[1].split(END, 1)[0]
    assert documented == table, (
        "docs/configuration.md is out of date: regenerate the table with "
        "`kowloon-config --markdown`")


def test_readme_links_resolve():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    import re
    missing = [p for p in re.findall(r"\]\(([^)#]+)[^)]*\)", text)
               if not p.startswith("http") and not os.path.exists(os.path.join(ROOT, p))]
    assert not missing, "README.md links to missing files: %s" % missing
