"""Provider adapters: one module per provider family, all behind `vas_api.types.Provider`."""
