"""The privileged-context templates: what the teacher reads beside the student's prompt, and what the warm-up
and the evaluation's `hint` variant show. One copy, so that the warm-up teaches exactly the text the teacher
reads later."""

from __future__ import annotations

# RLSD's released teacher template (the RLSD authors' released EasyR1 fork, its reference-solution
# prompt) without its <thought>/<answer> instruction, since the embedded task answers in \boxed{}.
REFERENCE_TEMPLATE = (
    "{question}\n\nHere is a reference solution:\n{hint}\n\n"
    "After understanding the reference solution, please try to solve this problem using your own approach below."
)
# SDPO's reprompt templates (the SDPO paper's released code): a successful sibling shown as the solution.
SIBLING_TEMPLATE = "{question}{solution}\n\nCorrectly solve the original question."
SOLUTION_TEMPLATE = "\nCorrect solution:\n\n{attempt}\n\n"
# The visual privileged context (data.privileged=image_hint): the reference is an image the teacher sees after the
# student's images, so the text names where it is and carries no answer itself.
IMAGE_HINT_TEMPLATE = (
    "{question}\n\nThe last image shows a reference answer.\n\n"
    "After understanding the reference answer, please try to solve this problem using your own approach below."
)
