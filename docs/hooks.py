"""MkDocs hook: the generated references are made from the code at build time, never copied.

``<!-- recipe-reference -->`` in a page becomes the table of every recipe key
(``insightface_bfm.train.recipe_docs``); the command-line reference is made by mkdocs-click.
"""

from insightface_bfm.train.recipe_docs import reference_markdown

MARKER = "<!-- recipe-reference -->"


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, reference_markdown())
    return markdown
