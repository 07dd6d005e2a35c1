"""``CAPTIONING_CONFIG_PATH``: the user's config folders join Hydra's search path
(``searchpath.UserConfigPath``). Hydra finds SearchPathPlugins only in the ``hydra_plugins``
package, hence here."""
