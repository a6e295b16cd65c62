# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The linear strategy run by Mitogen (the `mitogen` package of requirements-dev.txt), for the test VMs.

Under software emulation a task's own Python start-up (the AnsiballZ payload compiles ansible's
module_utils from source every time) costs ~5 s; Mitogen keeps one interpreter per host with the
imports warm, so a no-op task costs ~0.1 s. The modules themselves run unchanged.
See docs/dev/test-vm.md ("Mitogen").
"""

from __future__ import annotations

import ansible_mitogen.loaders
import ansible_mitogen.strategy

# The linear strategy that Mitogen's loader resolves, with Mitogen's connection handling mixed in.
_Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):
    pass
