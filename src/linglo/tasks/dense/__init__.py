"""Parts shared by the dense tasks (detect, segment): the backbone pyramid (pyramid), dataset file layouts
(layouts), drawing predictions (draw)."""
