"""``python tools/labelstudio_rounds_screenshot.py --out docs/active_learning_round2.png``: round 2 in Label Studio.

Starts a local Label Studio and ``keypatch serve`` (this process), makes a project whose brush
control has two labels (``annotated`` for round 1, ``key_patch`` for keypatch's proposals), adds the
backend as its model (Label Studio makes the webhook), imports one photo and retrieves round 1's
prediction; an annotation of exactly those patches is created through Label Studio's API (its
webhook tells the backend), round 2's prediction is retrieved, and a draft annotation holding
round 1's annotation and round 2's proposal together is opened in headless Chromium and
photographed: what an annotator opening the task in round 2 sees when the proposal is added to
what is already labelled. Needs ``label-studio``, ``label-studio-sdk`` here, and Playwright with a
Chromium (``--python`` names an interpreter that has Playwright).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from labelstudio_screenshot import TOKEN, arguments, local_label_studio, photograph, project_with_photo  # noqa: E402

CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="key_patch" background="rgba(255, 0, 255, 0.7)"/>
    <Label value="annotated" background="rgba(0, 200, 80, 0.7)"/>
  </BrushLabels>
</View>
"""


def main() -> None:
    args = arguments(__doc__, "docs/active_learning_round2.png", "coffee", 0.05, 8098)

    from label_studio_sdk import LabelStudio

    with local_label_studio(args.photo, args.ratio, args.port) as (url, backend, server, work):
        client = LabelStudio(base_url=url, api_key=TOKEN)
        project, ml, task = project_with_photo(client, "Key patches, round 2", CONFIG, server, work, args.photo)

        def prediction() -> dict:
            client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                                  selected_items={"all": True, "excluded": []})
            preds = client.predictions.list(task=task.id)
            pred = preds[-1]
            return pred if isinstance(pred, dict) else pred.dict()

        first = prediction()["result"][0]
        labelled = {**first, "id": "round1", "value": {**first["value"], "brushlabels": ["annotated"]}}
        client.annotations.create(id=task.id, result=[labelled])  # round 1 annotated; the webhook tells keypatch
        time.sleep(2)
        for p in client.predictions.list(task=task.id):
            client.predictions.delete(id=p.id if not isinstance(p, dict) else p["id"])
        second = prediction()["result"][0]
        both = client.annotations.create(id=task.id, result=[labelled, {**second, "id": "round2"}])
        photograph(args, url, f"{url}/projects/{project.id}/data?task={task.id}&annotation={both.id}")
        print(f"wrote {args.out} (model {ml.id}, annotated {backend.annotated})")


if __name__ == "__main__":
    main()
