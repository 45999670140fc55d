"""Remote control of a device: signed commands (``controller``, ``actions``), their replay
memory (``memory``) and replies (``replies``), snapshots (``snapshot``), shadow evaluation of a
candidate (``shadow``) and Home Assistant discovery (``homeassistant``)."""
