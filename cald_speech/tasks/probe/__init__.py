"""A CTC probe of frozen layers: how much a distilled student's layers tell about speech.

``model`` (:class:`ProbeModel`: a frozen upstream — a layer student or a teacher — a
learned softmax-weighted sum of its layers and a small CTC head) and ``recipe`` (the Task
behind ``recipes/LibriSpeech/probe/train.py``, trained by the ASR task's CTCBrain).
"""
