"""Pure numerics: signal features, bearing kinematics, sensor models, the fleet simulator."""
